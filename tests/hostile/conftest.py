"""Hostile inputs (issue 17, "Hardening"): each test feeds the code something a real run meets on
a bad day (clashing file names, empty or truncated inputs, a scorer folder that asks to run its
own code, corrupt checkpoints, inconsistent batch sizes) and checks the failure names its cause.

The other suites' helpers are reused: tests/unit (``_tiny``, ``_neox``) goes on sys.path here, and
``_hostile.wf`` is tests/workflow/conftest.py loaded under another module name (``tiny_config``,
``write_config``, ``smk``), so its fixtures are not registered twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _helpers in (_HERE, _HERE.parent / "unit"):
    if str(_helpers) not in sys.path:
        sys.path.insert(0, str(_helpers))
