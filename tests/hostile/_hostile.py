"""Shared helpers of tests/hostile (imported as ``from _hostile import ...``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_workflow_helpers():
    """tests/workflow/conftest.py as a plain module (its helpers, not its fixtures)."""
    name = "_winnow_workflow_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "workflow" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


wf = _load_workflow_helpers()
