"""Make the checkout's ``src/`` the package, and Snakemake's interpreter the ``python``, of every job.

The Snakefile calls :func:`export_source_tree` once; jobs (local, conda envs, Slurm, which
inherit the environment) then run ``python -m winnow`` from the same sources whose hashes the
rules' ``code`` params were computed from, even where the package is not installed.
"""

from __future__ import annotations

import os
import sys


def export_source_tree(src: str) -> None:
    parts = [src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    # Jobs say `python`: make that the interpreter Snakemake itself runs under (the project's
    # environment), even when it was started as .venv/bin/snakemake without activating the venv.
    # A rule's conda env, when used, is activated inside the job and comes first again.
    bindir = os.path.dirname(sys.executable)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
    os.environ["PATH"] = os.pathsep.join([bindir] + path)


def keep_other_runs_locks() -> bool:
    """Make a Snakemake run release only its own locks when it exits.

    Snakemake 9.27.1 (the pinned release, and the newest) ends every locking run with
    ``FilePersistence._delete_locks``, which removes this run's lock files and then
    ``shutil.rmtree(".snakemake/locks")``: the lock files of every other run in the directory go
    with it. A short run (an audit, a small target) that exits while a long one trains leaves the
    long run's outputs unprotected, and a third run can rebuild its inputs or start the same job
    twice. Patched here, in the head process that parses the Snakefile: a run removes its own lock
    files only; ``--unlock`` (``cleanup_locks``) still removes every lock, as documented.

    Returns whether the guard is active: nothing is patched when the installed Snakemake no longer
    removes the whole folder (the upstream behaviour changed) or is not the file-based backend.
    """
    import contextlib
    import inspect

    try:
        from snakemake.persistence.file import FilePersistence
    except ImportError:
        return False
    if getattr(FilePersistence, "_winnow_own_locks", False):
        return True
    original = FilePersistence._delete_locks
    if "rmtree" not in inspect.getsource(original):
        return False

    def _delete_own_locks(self) -> None:
        for lockfile in self._lockfile.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(lockfile)
        self._lockfile.clear()

    def cleanup_locks(self) -> None:  # `snakemake --unlock`: every lock, stale ones included
        original(self)

    FilePersistence._delete_locks = _delete_own_locks
    FilePersistence.cleanup_locks = cleanup_locks
    FilePersistence._winnow_own_locks = True
    return True


def set_aside_logs(jobs) -> list[str]:
    """Move the existing log files of the jobs about to run to ``<log>.prev``.

    Snakemake prints a failed job's log; a job that never started (sbatch refused it, or it was
    cancelled while pending) would show the log an earlier, successful run left behind. Each job
    that runs therefore starts with no log, and the previous one stays beside it for comparison.
    ``jobs``: Snakemake jobs (``.log`` lists their log paths). Returns the moved paths.
    """
    moved = []
    for job in jobs:
        for log in getattr(job, "log", None) or ():
            path = str(log)
            if os.path.isfile(path):
                os.replace(path, path + ".prev")
                moved.append(path)
    return moved
