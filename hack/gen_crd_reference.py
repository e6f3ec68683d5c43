"""Render the CircuitPolicy reference, docs/reference/circuitpolicy.md, from the CRD schema.

    python hack/gen_crd_reference.py           rewrite the text between the markers
    python hack/gen_crd_reference.py --check   exit 1 if the page is stale

Only the text between the markers is ever touched.
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

CRD = REPO / "crds" / "circuitpolicies.circuitgate.io.yaml"
SECTION = "policy-reference"
PAGE = REFERENCE / "circuitpolicy.md"
HEADING = "# CircuitPolicy reference"

Schema = dict[str, Any]


def spec_schema(crd_path: Path = CRD) -> Schema:
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def render(crd_path: Path = CRD) -> str:
    """The Markdown table, one row per field of CircuitPolicy.spec."""
    lines = [
        f"Generated from `{crd_path.relative_to(REPO)}` by `python hack/gen_crd_reference.py`;"
        " do not edit by hand.",
        "",
        "| Field | Type | Default | Description | Constraints |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path, schema, constraints in _fields(spec_schema(crd_path), "spec", required=True):
        default = f"`{_literal(schema['default'])}`" if _shows_default(schema) else ""
        cells = [f"`{path}`", _type(schema), default, _text(schema.get("description", ""))]
        cells.append("; ".join(constraints))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fields(
    schema: Schema, path: str, *, required: bool
) -> Iterator[tuple[str, Schema, list[str]]]:
    """Depth-first over the schema, in the order the CRD lists the fields."""
    # CEL rules with a fieldPath belong to that child's row.
    child_rules: dict[str, list[str]] = {}
    own_rules = []
    for rule in schema.get("x-kubernetes-validations", []):
        message = _text(rule.get("message") or rule["rule"])
        target = rule.get("fieldPath", "").lstrip(".")
        if target:
            child_rules.setdefault(target, []).append(message)
        else:
            own_rules.append(message)
    # The spec itself and the items of a list have no row: their fields do.
    if path != "spec" and not path.endswith("[]"):
        yield path, schema, _constraints(schema, required=required) + own_rules
    items = schema.get("items", {})
    if items.get("properties"):
        yield from _fields(items, f"{path}[]", required=False)
    needed = set(schema.get("required", []))
    for name, child in schema.get("properties", {}).items():
        extra = child_rules.get(name, [])
        for row_path, row_schema, row_constraints in _fields(
            child, f"{path}.{name}", required=name in needed
        ):
            if row_path == f"{path}.{name}":
                row_constraints = row_constraints + extra
            yield row_path, row_schema, row_constraints


def _type(schema: Schema) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "")
    if kind == "array":
        return f"[]{_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{_type(schema['additionalProperties'])}"
    return kind


def _constraints(schema: Schema, *, required: bool) -> list[str]:
    found = ["required"] if required else []
    if "enum" in schema:
        found.append("one of " + ", ".join(f"`{_literal(v)}`" for v in schema["enum"]))
    # An int-or-string field checks its number and string forms separately.
    as_number, as_string = (
        ("number: ", "string: ") if _type(schema) == "integer or string" else ("", "")
    )
    found += doc_sections.schema_bounds(schema, number=as_number, string=as_string)
    for key, unit in (("maxItems", "items"), ("maxProperties", "entries")):
        if key in schema:
            found.append(f"at most {schema[key]} {unit}")
    return found


def _shows_default(schema: Schema) -> bool:
    # An empty-object default only makes the nested defaults apply; its rows show them.
    return "default" in schema and schema["default"] != {}


def _literal(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _text(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def check(page: Path = PAGE, crd_path: Path = CRD) -> bool:
    """True if the CircuitPolicy reference (`docs/reference/circuitpolicy.md`) matches the CRD."""
    return doc_sections.is_current(page, SECTION, render(crd_path), HEADING)


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
