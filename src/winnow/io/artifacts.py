"""Loading artifacts with errors that name the file.

A truncated ``model.safetensors`` fails inside safetensors with "incomplete metadata", a broken
config inside transformers with a JSON error: neither says which of a run's many files it was.
:func:`naming` re-raises any load error as :class:`ArtifactError` with the path in front (errors
that already name the path pass unchanged, and so do out-of-memory errors, which are not about
the file), and :func:`load_tensors` is ``safetensors.torch.load_file`` under it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class ArtifactError(ValueError):
    """A file of a run could not be loaded (missing, truncated, corrupt, or not what it should be)."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(message)
        self.path = str(path)


def _is_memory_error(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"


@contextmanager
def naming(path: str | os.PathLike, what: str = "file") -> Iterator[None]:
    """Run the body; an exception that does not name ``path`` becomes an :class:`ArtifactError`
    ``"cannot load <what> <path>: <type>: <message>"`` (the original as its cause)."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as err:
        if _is_memory_error(err) or str(path) in str(err):
            raise
        raise ArtifactError(path, f"cannot load {what} {path}: {type(err).__name__}: {err}") from err


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """``safetensors.torch.load_file`` whose errors name ``path``."""
    from safetensors.torch import load_file

    with naming(path, "safetensors file"):
        return load_file(str(path), device=device)


def check_safetensors(path: str | os.PathLike) -> None:
    """Read the header of a safetensors file (cheap): a truncated file fails here, named."""
    from safetensors import safe_open

    with naming(path, "safetensors file"), safe_open(str(path), framework="pt"):
        pass


def check_hf_folder(folder: str | os.PathLike) -> None:
    """Before a ``from_pretrained`` of a local folder: its JSON files parse and its model weights'
    headers read, so a truncated file is named (transformers' own errors often do not)."""
    from pathlib import Path

    folder = Path(folder)
    for path in sorted(folder.glob("*.json")):
        read_json_file(path)
    for path in sorted(folder.glob("model*.safetensors")):
        check_safetensors(path)


def read_json_file(path: str | os.PathLike):
    """JSON of ``path`` whose errors (missing, truncated, not JSON) name it."""
    import json

    with naming(path, "JSON file"), open(path, encoding="utf-8") as fh:
        return json.load(fh)
