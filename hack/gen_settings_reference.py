"""Render docs/reference/settings.md from the worker's `circuitgate.settings.Settings`.

    python hack/gen_settings_reference.py           rewrite the text between the markers
    python hack/gen_settings_reference.py --check   exit 1 if the page is stale

Reads the dataclass's source (names, types, defaults, and the docstring under each field),
so the reference and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from circuitgate_devkit import doc_sections
from circuitgate_devkit.doc_sections import REFERENCE, REPO

SOURCE = REPO / "worker" / "circuitgate" / "settings.py"
SECTION = "settings-reference"
PAGE = REFERENCE / "settings.md"
HEADING = "# Worker settings reference"


def render(source: Path = SOURCE) -> str:
    """One row per ``circuitgate_*`` key."""
    tree = ast.parse(source.read_text())
    (settings,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    lines = [
        f"Generated from `{source.relative_to(REPO)}` by `python hack/gen_settings_reference.py`;"
        " do not edit by hand.",
        "",
        "| `app.conf` key | Type | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    body = settings.body
    for node, following in zip(body, [*body[1:], None], strict=True):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = " ".join(str(following.value.value).split())
        default = ast.unparse(node.value) if node.value is not None else ""
        cells = [f"`circuitgate_{node.target.id}`", f"`{ast.unparse(node.annotation)}`"]
        cells += [f"`{default}`", doc]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def check(page: Path = PAGE) -> bool:
    """True if the worker settings reference (`docs/reference/settings.md`) matches the code."""
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
