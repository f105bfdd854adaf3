"""A headless Chromium driven over the DevTools protocol on a pipe (no driver, no extra package).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages (JSON, NUL-terminated)
from fd 3 and writes replies and events to fd 4. This is enough to open a page, let its scripts
run, collect every script error, evaluate JavaScript in it and take a screenshot — what a person
opening the report would see.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# Flags for this sandbox: no GPU, no sandbox (root), and no background connections (the machine has
# no network; Chromium's own update/sync/quic traffic would only produce refused connections).
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--allow-file-access-from-files",  # the report's iframes load its own files from the zip folder
    "--remote-debugging-pipe",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One Chromium process with one page attached (flat session)."""

    def __init__(self, binary: str, window: tuple[int, int] = (1400, 1000)):
        self._profile = tempfile.mkdtemp(prefix="winnow-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands; Chromium reads fd 3
        self._evt_r, evt_w = os.pipe()  # Chromium writes fd 4; we read

        def child_fds():
            os.dup2(cmd_r, 3)
            os.dup2(evt_w, 4)

        self._stderr = open(Path(self._profile) / "stderr.log", "wb")  # a file: a full pipe would block
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={window[0]},{window[1]}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            pass_fds=(3, 4),
            preexec_fn=child_fds,
        )
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    # -- protocol -------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._evt_r], [], [], left)[0]:
                raise TimeoutError("no message from Chromium")
            chunk = os.read(self._evt_r, 1 << 16)
            if not chunk:
                err = (Path(self._profile) / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"Chromium closed the pipe:\n{err[-3000:]}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, timeout: float = 60.0, **params) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for_event(self, method: str, timeout: float = 60.0) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            e = self._read_message(deadline)
            if e.get("method") == method:
                return e
            self.events.append(e)

    # -- what a test needs ------------------------------------------------------------------------
    def open(self, url: str, settle_s: float = 1.0) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for_event("Page.loadEventFired")
        time.sleep(settle_s)  # scripts that render after load (React) get a moment

    def js(self, expression: str, settle_s: float = 0.0):
        """Value of a JavaScript expression in the page (promises awaited); raises on exceptions."""
        r = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}…: {r['exceptionDetails']}")
        if settle_s:
            time.sleep(settle_s)
        return r["result"].get("value")

    def pump(self, seconds: float) -> None:
        """Collect the events of the next ``seconds`` (script errors thrown by timers or renders)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read_message(deadline))
            except TimeoutError:
                return

    def errors(self) -> list[str]:
        """Every uncaught exception, console.error and error-level log entry seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        return out

    def screenshot(self, path: str | os.PathLike) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._cmd_w, self._evt_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
