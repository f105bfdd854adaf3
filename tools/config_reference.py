"""Write docs/configuration-reference.md from the config schema (its single source).

    python tools/config_reference.py            # rewrite docs/configuration-reference.md
    python tools/config_reference.py --check    # exit 1 with a diff when the committed file differs

One section per top-level key of workflow/schemas/config.schema.yaml, in schema order, each a table
key | type | default | description. Keys are dotted paths; ``<name>`` stands for a key of a map
(``additionalProperties``), ``[]`` for a list's items. The default is the schema's ``default`` (which
validation fills in; with the value config/config.yaml sets when that differs) or else the value
in config/config.yaml, marked "(config.yaml)". The output
depends on the two files only, so it is deterministic; tests/unit/test_config_reference.py fails
when the committed file is stale.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = ROOT / "config" / "config.yaml"
OUT = ROOT / "docs" / "configuration-reference.md"
NAME = "<name>"
_MISSING = object()


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def resolve(node: dict, root: dict) -> dict:
    """``node`` with a local ``$ref`` merged in (the node's own keys, e.g. description, win)."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not ref:
        return node
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    target = root
    for part in ref[2:].split("/"):
        target = target[part]
    merged = dict(resolve(target, root))
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def fmt_value(value) -> str:
    """A YAML-flow rendering of a config value: null, true, [a, b], {k: v}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and value in ("true", "false", "null", ""):
        return f'"{value}"'
    return str(value)


def type_of(node: dict, root: dict) -> str:
    node = resolve(node, root)
    if "enum" in node:
        return "one of " + ", ".join(fmt_value(v) for v in node["enum"])
    if "oneOf" in node and "type" not in node:
        parts = []
        for branch in node["oneOf"]:
            t = type_of(branch, root)
            if t not in parts:
                parts.append(t)
        return " or ".join(f"({p})" if " or " in p else p for p in parts)
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    out = []
    for t in types:
        if t == "array" and isinstance(node.get("items"), dict):
            inner = type_of(node["items"], root)
            out.append(f"array of ({inner})" if " " in inner and not inner.startswith("array") else f"array of {inner}")
        else:
            out.append(t)
    return " or ".join(out) or "any"


def config_value(config, path: list[str]):
    node = config
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def rows(schema: dict, config: dict) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """``[(section, [(key, type, default, description), ...]), ...]`` in schema order."""
    sections = []
    required_top = set(schema.get("required", []))
    for key, node in schema["properties"].items():
        out: list[tuple[str, str, str, str]] = []
        _walk(key, [key], node, key in required_top, schema, config, out)
        sections.append((key, out))
    return sections


def _row(key, path, node, required, root, config, out, name_desc=""):
    t = type_of(node, root)
    if required:
        t += ", required"
    value = config_value(config, path) if path is not None else _MISSING
    if isinstance(value, dict) and node.get("properties"):
        value = _MISSING  # a block: its keys' rows show their values
    if "default" in node:
        default = f"`{fmt_value(node['default'])}`"
        if value is not _MISSING and value != node["default"]:
            default += f"; config.yaml: {_config_cell(value)}"
    else:
        default = "" if value is _MISSING else f"{_config_cell(value)} (config.yaml)"
    desc = (node.get("description") or "").strip()
    if name_desc:
        desc = f"{desc} — name: {name_desc}" if desc else f"name: {name_desc}"
    out.append((key, t, default, desc))


def _config_cell(value) -> str:
    if isinstance(value, dict) and value:  # a map (subsets, external, ...): its entries' names
        return "entries " + ", ".join(f"`{k}`" for k in value)
    return f"`{fmt_value(value)}`"


def _walk(key, path, node, required, root, config, out, name_desc=""):
    """One row for ``node`` (the property ``key``), then rows for what it contains."""
    node = resolve(node, root)
    _row(key, path, node, required, root, config, out, name_desc)
    _children(key, path, node, root, config, out)


def _children(key, path, node, root, config, out):
    """Rows of ``node``'s properties, map values (``<name>``), list items (``[]``) and oneOf branches."""
    node = resolve(node, root)
    req = set(node.get("required", []))
    for child, sub in (node.get("properties") or {}).items():
        child_path = None if path is None else [*path, child]
        _walk(f"{key}.{child}", child_path, sub, child in req, root, config, out)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        names = resolve(node.get("propertyNames") or {}, root)
        _walk(f"{key}.{NAME}", None, extra, False, root, config, out, (names.get("description") or "").strip())
    items = node.get("items")
    if isinstance(items, dict):
        _children(f"{key}[]", None, items, root, config, out)
    for combinator in ("oneOf", "anyOf", "allOf"):
        for branch in node.get(combinator) or []:
            if isinstance(branch, dict):
                _children(key, path, branch, root, config, out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _desc_cell(text: str) -> str:
    # A bare <name> would be read as an HTML tag and vanish.
    return _cell(text).replace("<", "&lt;")


def render(schema: dict | None = None, config: dict | None = None) -> str:
    schema = load_yaml(SCHEMA) if schema is None else schema
    config = load_yaml(CONFIG) if config is None else config
    lines = [
        "<!-- Generated by tools/config_reference.py from workflow/schemas/config.schema.yaml:",
        "     edit the schema's descriptions, then run python tools/config_reference.py. -->",
        "",
        "# Configuration reference",
        "",
        " ".join(schema.get("description", "").split()),
        "",
        "How configs are merged and validated: [config/README.md](../config/README.md). Keys are dotted",
        f"paths; `{NAME}` stands for a key you choose (a map's entries), `[]` for an entry of a list.",
        "**default** is the schema's default, filled in at validation when the key is absent (followed by",
        "the value [config/config.yaml](../config/config.yaml) sets, where that differs), or else, marked",
        "(config.yaml), the value config/config.yaml sets: those apply unless you pass",
        "`--replace-workflow-config`. *required* keys must be set when their block is present.",
        "",
        "Blocks: " + ", ".join(f"[`{section}`](#{section})" for section, _ in rows(schema, config)),
        "",
    ]
    for section, table in rows(schema, config):
        lines += [f"## {section}", "", "| key | type | default | description |", "|---|---|---|---|"]
        for key, t, default, desc in table:
            t = t.replace(", required", ", *required*")
            lines.append(f"| `{key}` | {_cell(t)} | {_cell(default)} | {_desc_cell(desc)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when the committed file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current == text:
            return 0
        rel = OUT.relative_to(ROOT) if OUT.is_relative_to(ROOT) else OUT
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"{rel} (committed)",
                f"{rel} (generated)",
            )
        )
        print(f"\n{rel} is stale: run python tools/config_reference.py", file=sys.stderr)
        return 1
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
