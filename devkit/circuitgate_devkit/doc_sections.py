"""Generated sections of the docs pages: the text between `<!-- BEGIN name -->` and `END name`.

Shared by the reference generators, which write `docs/reference/*.md`, so each one only renders
its table. Only the text between the markers is ever touched; a missing page or section is
added under the given heading.

Also an MkDocs hook (`hooks:` in mkdocs.yml): the tables are GitHub-flavoured, where a pipe in
a code span must be escaped, and the hook lets MkDocs render them the same way.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitgate_devkit.paths import REPO

REFERENCE = REPO / "docs" / "reference"

_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def replace_section(page_text: str, name: str, body: str, heading: str) -> str:
    """Page text with ``body`` between the markers of ``name``, adding the section if missing."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(page_text):
        return pattern.sub(lambda _: block, page_text, count=1)
    if page_text and not page_text.endswith("\n"):
        page_text += "\n"
    separator = "\n" if page_text else ""
    return f"{page_text}{separator}{heading}\n\n{block}\n"


def is_current(page: Path, name: str, body: str, heading: str) -> bool:
    """True if the page's section already holds ``body``."""
    current = page.read_text() if page.exists() else ""
    return replace_section(current, name, body, heading) == current


def write(page: Path, name: str, body: str, heading: str) -> bool:
    """Rewrite the section; True if the file changed."""
    current = page.read_text() if page.exists() else ""
    updated = replace_section(current, name, body, heading)
    if updated != current:
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(updated)
    return updated != current


def schema_bounds(schema: dict[str, Any], *, number: str = "", string: str = "") -> list[str]:
    """A JSON schema's range, length and pattern, in words; prefixes tell int-or-string forms."""
    found = []
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        found.append(f"{number}{low} to {high}")
    elif low is not None:
        found.append(f"{number}at least {low}")
    elif high is not None:
        found.append(f"{number}at most {high}")
    if "maxLength" in schema:
        found.append(f"{string}at most {schema['maxLength']} characters")
    if "pattern" in schema:
        found.append(f"{string}matches `{schema['pattern']}`")
    return found


def main(
    argv: list[str] | None,
    *,
    description: str,
    page: Path,
    name: str,
    render: Callable[[], str],
    heading: str,
) -> int:
    """The command line every generator shares: rewrite the section, or ``--check`` it."""
    shown = page.relative_to(REPO)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {shown} is stale")
    if parser.parse_args(argv).check:
        if is_current(page, name, render(), heading):
            return 0
        print(f"{shown} section {name} is stale: run python {sys.argv[0]}")
        return 1
    if write(page, name, render(), heading):
        print(f"updated {shown}")
    return 0


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: ``\\|`` in a table's code span is a pipe, as on GitHub.

    Python-Markdown never splits a row at a pipe inside backticks, but shows the backslash.
    """
    lines = []
    for line in markdown.splitlines(keepends=True):
        if line.startswith("|"):
            line = _CODE_SPAN.sub(lambda span: span.group(0).replace("\\|", "|"), line)
        lines.append(line)
    return "".join(lines)
