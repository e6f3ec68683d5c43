"""Render the Helm chart values reference, docs/reference/chart-values.md, from its schema.

    python hack/gen_chart_reference.py           rewrite the text between the markers
    python hack/gen_chart_reference.py --check   exit 1 if the page is stale

Descriptions, types and constraints come from the schema Helm validates values with; defaults
come from the chart's values.yaml. Rules across values (an ``allOf`` entry whose ``$comment``
names the value) are shown on that value's row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from circuitgate_devkit import doc_sections
from circuitgate_devkit.doc_sections import REFERENCE, REPO

CHART = REPO / "charts" / "circuitgate-operator"
SCHEMA = CHART / "values.schema.json"
VALUES = CHART / "values.yaml"
SECTION = "chart-values-reference"
PAGE = REFERENCE / "chart-values.md"
HEADING = "# Chart values reference"

Schema = dict[str, Any]


def render(schema_path: Path = SCHEMA, values_path: Path = VALUES) -> str:
    """The Markdown table, one row per value, in the schema's order."""
    schema = json.loads(schema_path.read_text())
    defaults = yaml.safe_load(values_path.read_text())
    rules: dict[str, list[str]] = {}
    for entry in schema.get("allOf", []):
        for message in entry.get("then", {}).get("required", []):
            rules.setdefault(entry["$comment"], []).append(message)
    lines = [
        f"Generated from `{schema_path.relative_to(REPO)}` and `{values_path.relative_to(REPO)}`"
        " by `python hack/gen_chart_reference.py`; do not edit by hand.",
        "",
        "| Value | Type | Default | Description | Constraints |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path, child in _values(schema, schema):
        default = _default(defaults, path)
        cells = [
            f"`{path}`",
            _type(child, schema),
            "" if default is None else f"`{json.dumps(default)}`",
            _text(child.get("description", "")),
            "; ".join(_constraints(child, schema) + rules.get(path, [])),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _values(schema: Schema, root: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Depth-first; an object with fixed keys has no row of its own, its keys do."""
    for name, child in schema.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        if child.get("additionalProperties") is False and "properties" in child:
            yield from _values(child, root, child_path)
        else:
            yield child_path, child


def _resolve(schema: Schema, root: Schema) -> Schema:
    ref = schema.get("$ref", "")
    if ref.startswith("#/"):
        target: Schema = root
        for part in ref[2:].split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _type(schema: Schema, root: Schema) -> str:
    schema = _resolve(schema, root)
    kind = schema.get("type", "")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        return f"[]{_type(schema.get('items', {}), root)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type(schema['additionalProperties'], root)}"
    return str(kind)


def _constraints(schema: Schema, root: Schema) -> list[str]:
    schema = _resolve(schema, root)
    found = []
    if "enum" in schema:
        found.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "minLength" in schema:
        found.append("not empty" if schema["minLength"] == 1 else f"{schema['minLength']}+ chars")
    found += doc_sections.schema_bounds(schema)
    if schema.get("uniqueItems"):
        found.append("no duplicates")
    items = schema.get("items")
    if isinstance(items, dict):
        found += [f"each: {rule}" for rule in _constraints(items, root)]
    for name, child in schema.get("properties", {}).items():
        found += [f"{name}: {rule}" for rule in _constraints(child, root)]
    return found


def _default(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _text(text: str) -> str:
    return " ".join(text.split())


def check(page: Path = PAGE) -> bool:
    """True if the chart values reference (`docs/reference/chart-values.md`) matches the chart."""
    return doc_sections.is_current(page, SECTION, render(), HEADING)


def main(argv: list[str] | None = None) -> int:
    return doc_sections.main(
        argv,
        description=__doc__.splitlines()[0],
        page=PAGE,
        name=SECTION,
        render=render,
        heading=HEADING,
    )


if __name__ == "__main__":
    sys.exit(main())
