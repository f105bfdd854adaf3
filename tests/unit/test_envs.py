"""requirements.txt and envs/winnow.yaml pin the same packages at the same versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([0-9][A-Za-z0-9.+!_-]*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def parse_pins(lines: list[str], where: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in lines:
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{where}: not an exact pin: {raw!r}"
        name = _norm(m.group(1))
        assert name not in pins, f"{where}: {name} pinned twice"
        pins[name] = m.group(3)
    return pins


def requirements() -> dict[str, str]:
    return parse_pins((ROOT / "requirements.txt").read_text().splitlines(), "requirements.txt")


def conda_env() -> dict:
    return yaml.safe_load((ROOT / "envs" / "winnow.yaml").read_text())


def conda_pip_pins() -> dict[str, str]:
    pip = [d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "envs/winnow.yaml needs exactly one pip: section"
    return parse_pins(pip[0], "envs/winnow.yaml")


def test_parse_pins_rejects_loose_specs():
    assert parse_pins(["Foo_Bar==1.2  # why", "# comment", "", "x[extra]==2"], "t") == {"foo-bar": "1.2", "x": "2"}
    for bad in ("torch>=2", "torch", "torch==2.*,<3"):
        with pytest.raises(AssertionError):
            parse_pins([bad], "t")


def test_requirements_pins_equal_conda_pip_pins():
    req, env = requirements(), conda_pip_pins()
    assert req, "requirements.txt has no pins"
    only_req = {k: v for k, v in req.items() if k not in env}
    only_env = {k: v for k, v in env.items() if k not in req}
    differ = {k: (req[k], env[k]) for k in req.keys() & env.keys() if req[k] != env[k]}
    assert not only_req, f"pinned only in requirements.txt: {only_req}"
    assert not only_env, f"pinned only in envs/winnow.yaml: {only_env}"
    assert not differ, f"different versions (requirements.txt, envs/winnow.yaml): {differ}"


def test_conda_env_has_python_and_pip():
    deps = [d for d in conda_env()["dependencies"] if isinstance(d, str)]
    assert "pip" in deps
    py = [d for d in deps if d.startswith("python")]
    assert len(py) == 1 and re.fullmatch(r"python=3\.\d+", py[0])
    # the pinned python satisfies the package's requires-python (>=3.11)
    assert tuple(int(x) for x in py[0].split("=")[1].split(".")) >= (3, 11)
