"""The config schema is the single source of the configuration reference (docs/configuration-reference.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema(ref):
    return ref.load_yaml(ref.SCHEMA)


def _properties(node, path, root):
    """(dotted path, schema) of every property and map value (<name>) the schema declares."""
    if not isinstance(node, dict):
        return
    if "$ref" in node and node["$ref"].startswith("#/$defs/"):
        node = {**root["$defs"][node["$ref"].split("/")[-1]], **node}
    for key, sub in (node.get("properties") or {}).items():
        yield f"{path}.{key}".lstrip("."), sub
        yield from _properties(sub, f"{path}.{key}", root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield f"{path}.<name>", extra
        yield from _properties(extra, f"{path}.<name>", root)
    if isinstance(node.get("items"), dict):
        yield from _properties(node["items"], f"{path}[]", root)
    for combinator in ("oneOf", "anyOf", "allOf"):
        for branch in node.get(combinator) or []:
            yield from _properties(branch, path, root)


def test_committed_reference_is_generated(ref):
    committed = ref.OUT.read_text(encoding="utf-8") if ref.OUT.exists() else ""
    assert committed == ref.render(), (
        "docs/configuration-reference.md differs from the schema: run python tools/config_reference.py"
    )


def test_every_schema_property_has_a_description(schema):
    props = list(_properties(schema, "", schema))
    for name, node in schema["$defs"].items():
        props += list(_properties(node, f"$defs.{name}", schema))
    assert len(props) > 200
    missing = [
        path for path, node in props if not (isinstance(node, dict) and str(node.get("description", "")).strip())
    ]
    assert not missing, f"schema properties without a description: {missing}"


def test_every_default_config_key_is_in_the_reference(ref, schema):
    config = ref.load_yaml(ref.CONFIG)
    documented = {key for _, table in ref.rows(schema, config) for key, *_ in table}

    def keys(value, node, path):
        node = ref.resolve(node, schema)
        for key, sub in value.items():
            if key in (node.get("properties") or {}):
                child, name = node["properties"][key], f"{path}{key}"
            elif isinstance(node.get("additionalProperties"), dict):
                child, name = node["additionalProperties"], f"{path}<name>"
            else:
                child, name = {}, f"{path}{key}"  # not in the schema: reported below
            yield name
            if isinstance(sub, dict):
                yield from keys(sub, child, f"{name}.")

    config_keys = list(keys(config, schema, ""))
    assert len(config_keys) > 150
    missing = sorted(set(config_keys) - documented)
    assert not missing, f"config/config.yaml keys missing from docs/configuration-reference.md: {missing}"


def test_check_flags_a_stale_reference(ref, tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration-reference.md"
    stale.write_text(ref.render().replace("| `run` |", "| `runs` |"), encoding="utf-8")
    monkeypatch.setattr(ref, "OUT", stale)
    assert ref.main(["--check"]) == 1
    assert "+| `run` |" in capsys.readouterr().out
    stale.write_text(ref.render(), encoding="utf-8")
    assert ref.main(["--check"]) == 0
