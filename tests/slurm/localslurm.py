"""A real single-node Slurm cluster (munged + slurmctld + slurmd) with fake GPUs, for tests.

Everything lives in one directory of its own: slurm.conf and gres.conf, the munge key and socket,
state, spool, logs, PID files and the fake GPU device nodes. Clients find the cluster through
``SLURM_CONF`` (see :attr:`LocalSlurm.env`), the daemons listen on free ports picked at start, and
munged runs on a socket of its own, so the cluster neither touches /etc/slurm nor collides with
another cluster (or another copy of this one) on the same host.

:meth:`LocalSlurm.down` stops only the daemons :meth:`LocalSlurm.up` started, by their PID files,
after checking that each PID still belongs to the program it started.

Usage outside pytest (as root)::

    python tests/slurm/localslurm.py up DIR      # prints `export SLURM_CONF=...`
    python tests/slurm/localslurm.py down DIR
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")  # Debian 12: Slurm 22.05 (slurmctld, slurmd, client) and munge
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


class SlurmUnavailable(Exception):
    """Slurm cannot be had on this machine (a reason to skip, not a failure)."""


class SlurmSetupError(RuntimeError):
    """Installing or starting Slurm went wrong (a failure, with the reason and the logs)."""


def which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", "")] + list(SBIN))
    return shutil.which(name, path=path)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if which(b) is None]


def ensure_installed(log=print) -> None:
    """Install slurm-wlm and munge with apt when a binary is missing.

    Raises SlurmUnavailable when that is impossible here (not root, no apt-get) and
    SlurmSetupError, with apt's output, when apt-get itself fails.
    """
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"Slurm is not installed (missing {', '.join(missing)}) and we are not root")
    apt = which("apt-get")
    if apt is None:
        raise SlurmUnavailable(f"Slurm is not installed (missing {', '.join(missing)}) and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Package scripts must not start daemons (they would on a systemd host): a policy-rc.d that
    # says "no" for the duration of the install, removed afterwards if we put it there.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    t0 = time.monotonic()
    log(f"installing {' '.join(PACKAGES)} with apt-get (missing: {', '.join(missing)})")
    try:
        for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
                raise SlurmSetupError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}")
    except subprocess.TimeoutExpired as err:
        raise SlurmSetupError(f"`{' '.join(err.cmd)}` did not finish in {err.timeout} s") from err
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    still = missing_binaries()
    if still:
        raise SlurmSetupError(f"apt-get installed {PACKAGES} but these are still missing: {', '.join(still)}")
    log(f"installed in {time.monotonic() - t0:.0f} s")


def host_memory_mb() -> int:
    """MemTotal of this host in MiB (Slurm's "MB"), rounded down."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmSetupError("no MemTotal in /proc/meminfo")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a stopped daemon whose parent has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pid_of(pidfile: Path, comm: str) -> int | None:
    """The PID in ``pidfile`` if that process is alive and is ``comm`` (guards against reused PIDs)."""
    try:
        pid = int(re.sub(r"\D", "", pidfile.read_text()) or "0")
        actual = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and actual == comm and running(pid) else None


class LocalSlurm:
    """One single-node cluster under ``root``: ``up()``, use :attr:`env` for clients, ``down()``."""

    DAEMONS = ("munged", "slurmctld", "slurmd")  # start order; stopped in reverse

    def __init__(
        self,
        root: str | os.PathLike,
        gpus: int = 2,
        gpu_type: str = "fake",
        partition: str = "winnowtest",
        cpus: int | None = None,
        mem_mb: int | None = None,
        log=print,
    ):
        """``cpus`` and ``mem_mb`` are what the node advertises; by default the host's own CPUs and
        memory, at most 22,000 MB (a small GPU node: the checked-in profile must fit it as it is).
        Nothing enforces them (no cgroups), but Slurm refuses or holds jobs that ask for more."""
        self.root = Path(root).resolve()
        self.gpus = gpus
        self.gpu_type = gpu_type
        self.partition = partition
        self.cpus = cpus or (os.cpu_count() or 1)
        self.mem_mb = mem_mb or min(host_memory_mb(), 22000)
        self.log = log
        self.node = socket.gethostname().split(".")[0]
        d = self.root
        self.etc, self.run, self.logs = d / "etc", d / "run", d / "log"
        self.conf = self.etc / "slurm.conf"
        self.munge_socket = d / "munge" / "munge.socket"
        self.jobcomp = self.logs / "jobcomp.txt"
        self.pidfiles = {
            "munged": self.run / "munged.pid",
            "slurmctld": self.run / "slurmctld.pid",
            "slurmd": self.run / "slurmd.pid",
        }
        self.started = self.run / "started"  # one daemon name per line, as each is started

    # ---------------------------------------------------------------- public
    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (and, through ``sbatch --export=ALL``, for jobs)."""
        path = os.pathsep.join([os.environ.get("PATH", "")] + [p for p in SBIN if p not in os.environ.get("PATH", "")])
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=path)

    @property
    def slurmctld_log(self) -> Path:
        return self.logs / "slurmctld.log"

    def up(self, timeout: float = 90) -> LocalSlurm:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmd needs root")
        ensure_installed(self.log)
        t0 = time.monotonic()
        for sub in ("etc", "run", "log", "munge", "state", "spool", "fakegpu"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.started.touch()
        try:
            self._start_munged()
            self._write_configs()
            self._start("slurmctld", [which("slurmctld"), "-f", str(self.conf)])
            self._wait(timeout, "slurmctld answering `scontrol ping`", lambda: "UP" in self._out("scontrol", "ping"))
            self._start("slurmd", self._in_own_mount_namespace([which("slurmd"), "-f", str(self.conf)]))
            self._wait(timeout, f"node {self.node} idle", lambda: self.node_state() in ("idle", "mixed", "allocated"))
        except BaseException:
            self.down()  # whatever did start
            raise
        self.log(f"slurm up in {time.monotonic() - t0:.1f} s: {self.describe()}")
        return self

    def down(self) -> None:
        """Cancel what is still queued or running, then stop the daemons we started (reverse order)."""
        names = self._started_names()
        if "slurmctld" in names and pid_of(self.pidfiles["slurmctld"], "slurmctld"):
            subprocess.run(
                [which("scancel"), "--full", "--partition", self.partition], env=self.env, capture_output=True
            )
            self._wait(
                20,
                "jobs to end",
                lambda: not self._out("squeue", "-h", "-t", "PD,R,CG", "-o", "%i").strip(),
                fail=False,
            )
        problems = []
        for name in reversed(self.DAEMONS):
            if name not in names:
                continue
            pid = pid_of(self.pidfiles[name], name)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            if not self._wait(30, f"{name} ({pid}) to stop", lambda p=pid: not running(p), fail=False):
                if pid_of(self.pidfiles[name], name) == pid:
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
            if pid_of(self.pidfiles[name], name) == pid:
                problems.append(f"{name} ({pid}) would not stop")
        self.started.write_text("")
        if problems:
            raise SlurmSetupError("; ".join(problems))

    def node_state(self) -> str:
        return self._out("sinfo", "-h", "-N", "-n", self.node, "-o", "%T").strip()

    def describe(self) -> str:
        return (
            f"node {self.node} ({self.cpus} CPUs, {self.mem_mb} MB, gpu:{self.gpu_type}:{self.gpus}) "
            f"partition {self.partition}, slurm.conf {self.conf}"
        )

    def scontrol_job(self, job_id: int | str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (finished jobs stay visible for MinJobAge)."""
        out = self._out("scontrol", "show", "job", "-o", str(job_id))
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def jobcomp_records(self) -> dict[int, dict[str, str]]:
        """Job completion records (jobcomp/filetxt): job id -> fields, one per finished job."""
        records = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                rec = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                if "JobId" in rec:
                    records[int(rec["JobId"])] = rec
        return records

    def submitted_job_ids(self) -> set[int]:
        """Every batch job slurmctld accepted, from its log."""
        text = self.slurmctld_log.read_text() if self.slurmctld_log.exists() else ""
        return {int(m) for m in re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text)}

    def logs_tail(self, n: int = 30) -> str:
        parts = []
        for f in sorted(self.logs.glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"==> {f} <==\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---------------------------------------------------------------- internals
    def _started_names(self) -> list[str]:
        return self.started.read_text().split() if self.started.exists() else []

    def _out(self, *cmd: str) -> str:
        proc = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], env=self.env, capture_output=True, text=True)
        return proc.stdout

    def _wait(self, timeout: float, what: str, ok, fail: bool = True) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if ok():
                    return True
            except OSError:
                pass
            dead = [n for n in self._started_names() if pid_of(self.pidfiles[n], n) is None]
            if fail and dead:
                raise SlurmSetupError(f"{', '.join(dead)} died while waiting for {what}\n{self.logs_tail()}")
            time.sleep(0.3)
        if fail:
            raise SlurmSetupError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs_tail()}")
        return False

    def _start(self, name: str, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True)  # each daemonizes
        if proc.returncode != 0:
            raise SlurmSetupError(f"{name} failed to start ({proc.returncode}): {proc.stderr}\n{self.logs_tail()}")
        self._wait(30, f"{name}'s PID file", lambda: pid_of(self.pidfiles[name], name) is not None)
        with self.started.open("a") as f:
            f.write(name + "\n")

    def _in_own_mount_namespace(self, cmd: list[str]) -> list[str]:
        """``cmd`` started in a mount namespace of its own in which /etc/slurm is our etc/.

        Jobs are children of slurmd, so inside them the cluster's slurm.conf is at the default path,
        as on a real node. That matters: the Snakemake jobstep plugin (0.6.1) strips every SLURM_*
        variable except the job's identity before its nested `srun`, SLURM_CONF included, and srun
        then looks for /etc/slurm/slurm.conf. The host's /etc/slurm is not touched."""
        unshare = which("unshare")
        probe = subprocess.run(
            [unshare or "unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True
        )
        if unshare is None or probe.returncode != 0:
            raise SlurmUnavailable(f"cannot create a mount namespace for slurmd (unshare: {probe.stderr.strip()})")
        Path("/etc/slurm").mkdir(exist_ok=True)
        script = f'mount --bind "{self.etc}" /etc/slurm && exec "$0" "$@"'
        return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, *cmd]

    def _start_munged(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        # Our own munged on our own socket (root-owned, 0700 dirs); slurm.conf points at it.
        self._start(
            "munged",
            [
                which("munged"),
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.pidfiles['munged']}",
                f"--log-file={self.logs / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                "--force",  # we run it as root
            ],
        )
        self._wait(10, "munge socket", self.munge_socket.exists)

    def _gpu_files(self) -> str:
        """Fake GPUs: character devices (clones of /dev/null). slurmd 22.05 drops GPU gres without
        File= and warns about regular files; character devices count cleanly."""
        files = []
        for i in range(self.gpus):
            f = self.root / "fakegpu" / f"gpu{i}"
            if not f.exists():
                try:
                    os.mknod(f, 0o666 | 0o020000, os.makedev(1, 3))
                except OSError as err:
                    raise SlurmSetupError(f"cannot create the fake GPU device {f}: {err}") from err
            files.append(f)
        return f"{self.root / 'fakegpu'}/gpu[0-{self.gpus - 1}]" if self.gpus > 1 else str(files[0])

    def _write_configs(self) -> None:
        d = self.root
        gres_node = f"Gres=gpu:{self.gpu_type}:{self.gpus}" if self.gpus else ""
        conf = f"""\
# Written by tests/slurm/localslurm.py: a single-node test cluster, no cgroups, no accounting.
ClusterName=winnowtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={self.pidfiles["slurmctld"]}
SlurmdPidFile={self.pidfiles["slurmd"]}
SlurmdSpoolDir={d / "spool"}
StateSaveLocation={d / "state"}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node advertises what is written below (the host's CPUs, at most 22,000 MB), not slurmd -C.
SlurmdParameters=config_overrides
DefMemPerCPU=1024
# Finished jobs stay visible to squeue (the profile's status command) and scontrol this long.
MinJobAge=3600
KillWait=5
{"GresTypes=gpu" if self.gpus else ""}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Without slurmdbd, one completion record per job goes to this file.
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
SlurmctldDebug=info
SlurmctldLogFile={self.logs / "slurmctld.log"}
SlurmdDebug=info
SlurmdLogFile={self.logs / "slurmd.log"}
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory={self.mem_mb} {gres_node} State=UNKNOWN
# Not a default partition: a job only runs here if the user's side named the partition.
PartitionName={self.partition} Nodes=ALL Default=NO MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        gres = self.etc / "gres.conf"  # read from slurm.conf's directory
        gres.write_text(
            f"NodeName={self.node} Name=gpu Type={self.gpu_type} File={self._gpu_files()}\n" if self.gpus else ""
        )
        for f in (self.conf, gres):
            f.chmod(0o644)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__)
        return 2
    cluster = LocalSlurm(argv[1])
    if argv[0] == "up":
        cluster.up()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
