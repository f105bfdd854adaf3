"""Provenance: hashes of code, inputs and config, and the JSON sidecar every artifact gets.

The code hash of a CLI command covers the *transitive closure* of the ``winnow`` modules it
imports (found statically with ``ast``, so computing it imports nothing). The rules pass it as a
``params:`` value: editing a module reruns exactly the jobs whose commands depend on it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
TRACKED_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "pyarrow",
    "numpy",
    "safetensors",
    "lm_eval",
    "peft",
)


def module_path(module: str) -> Path:
    """``winnow.data.ingest`` → the ``.py`` file (package → its ``__init__.py``)."""
    parts = module.split(".")
    if parts[0] != "winnow":
        raise ValueError(f"not a winnow module: {module}")
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    raise FileNotFoundError(f"no source for {module}")


def _imports(module: str) -> set[str]:
    path = module_path(module)
    return set(_imports_of_source(module, path.read_bytes(), str(path)))


@lru_cache(maxsize=1024)
def _imports_of_source(module: str, source: bytes, filename: str) -> frozenset[str]:
    """The winnow modules one source imports, cached on its content: parsing is the cost of a code
    hash, and the Snakefile hashes ~50 commands over the same few dozen modules."""
    tree = ast.parse(source.decode("utf-8"), filename=filename)
    path = Path(filename)
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "winnow" or name.startswith("winnow."):
                try:
                    module_path(name)
                except FileNotFoundError:
                    continue  # ``from winnow.x import function``: the module is the prefix
                found.add(name)
    return frozenset(found)


@cache
def module_closure(modules: tuple[str, ...]) -> tuple[str, ...]:
    """All winnow modules reachable by imports from ``modules`` (sorted)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(_imports(mod) - seen)
    return tuple(sorted(seen))


def code_hash(*modules: str) -> str:
    """sha256 (first 16 hex digits) over the sources of ``modules`` and everything they import."""
    digest = hashlib.sha256()
    for mod in module_closure(tuple(sorted(modules))):
        digest.update(mod.encode() + b"\0")
        digest.update(module_path(mod).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def command_hash(command: str) -> str:
    """Code hash of one CLI command: its logic modules (transitively) + its CLI group module."""
    from winnow.commands import COMMANDS

    group = command.split()[0]
    digest = hashlib.sha256(code_hash(*COMMANDS[command]).encode())
    for path in cli_sources(group):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cli_sources(group: str) -> list[Path]:
    """The source files of CLI group ``group``: its module, or every module of its package
    (winnow/cli/less/), whose commands live in the package's modules."""
    path = module_path(f"winnow.cli.{group}")
    return sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]


def command_modules(command: str) -> list[str]:
    from winnow.commands import COMMANDS

    return list(module_closure(tuple(sorted(COMMANDS[command])))) + [f"winnow.cli.{command.split()[0]}"]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for sub in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(sub.relative_to(path)).encode() + b"\0" + file_sha256(sub).encode())
    return digest.hexdigest()


def package_versions(names: Iterable[str] = TRACKED_DISTRIBUTIONS) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@lru_cache(maxsize=1)
def git_state() -> dict[str, str | bool | None]:
    """Commit and dirty flag of the checkout the package runs from (None outside git)."""
    try:
        root = PACKAGE_ROOT.parent.parent
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def _cuda_used() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def sidecar_path(artifact: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(artifact)}.prov.json")


def inputs_sha256(inputs: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{path: sha256}`` of a job's inputs, as a sidecar records them."""
    return {os.fspath(p): path_sha256(p) for p in inputs}


def build_sidecar(
    artifact: str | os.PathLike,
    command: str,
    params: dict,
    inputs: Iterable[str | os.PathLike] = (),
    seed: int | None = None,
    extra: dict | None = None,
    input_sha256: dict | None = None,
) -> dict:
    """The provenance record of one artifact (written after the artifact itself).

    ``input_sha256``: the inputs' hashes when the caller has them (one job's many artifacts share
    inputs: hashing a large input once per artifact would cost more than the job)."""
    from winnow import __version__

    return {
        "artifact": os.fspath(artifact),
        "sha256": path_sha256(artifact),
        "bytes": Path(artifact).stat().st_size if Path(artifact).is_file() else None,
        "command": command,
        "params": params,
        "seed": seed,
        "inputs": input_sha256 if input_sha256 is not None else inputs_sha256(inputs),
        "code": {"hash": command_hash(command), "modules": command_modules(command)},
        "winnow_version": __version__,
        "git": git_state(),
        "versions": package_versions(),
        "host": socket.gethostname(),
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # CUDA kernels (atomics in reductions, cuBLAS split-K) need not repeat bit for bit; the
        # audit's run-to-run comparison then allows a tolerance. CPU runs must be identical.
        "deterministic": not _cuda_used(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write_sidecar(artifact: str | os.PathLike, **kwargs) -> Path:
    from winnow.io.atomic import write_json

    path = sidecar_path(artifact)
    write_json(path, build_sidecar(artifact, **kwargs))
    return path
