"""Progress lines with rate and ETA, logged at a steady interval (not only at the end).

prog = Progress("tokenize", total=n_docs, unit="docs")
for doc in docs:
    ...
    prog.update(1, tokens=len(ids))   # extra counters are summed and shown as rates
prog.done()
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("winnow.progress")


class Progress:
    def __init__(self, name: str, total: int | None, unit: str = "items", interval_s: float = 10.0):
        self.name, self.total, self.unit, self.interval_s = name, total, unit, interval_s
        self.count = 0
        self.extra: dict[str, float] = {}
        self.start = self.last = time.monotonic()
        log.info("%s: start (%s %s)", name, total if total is not None else "?", unit)

    def update(self, n: int = 1, **extra: float) -> None:
        self.count += n
        for key, value in extra.items():
            self.extra[key] = self.extra.get(key, 0.0) + value
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None, **show: object) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        parts = [f"{self.name}: {self.count}"]
        if self.total:
            parts[0] += f"/{self.total} ({100.0 * self.count / self.total:.1f}%)"
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            parts.append(f"ETA {_fmt(eta)}")
        parts.append(f"{rate:.2f} {self.unit}/s")
        parts += [f"{v / elapsed:.1f} {k}/s" for k, v in self.extra.items()]
        parts.append(f"elapsed {_fmt(elapsed)}")
        parts += [f"{k}={v}" for k, v in show.items()]
        return ", ".join(parts)

    def done(self) -> None:
        log.info("%s (done)", self.line())


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
