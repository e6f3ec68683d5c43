"""Generated sections of README.md: text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.

Shared by the reference generators so each one only renders its table.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def replace_section(readme_text: str, name: str, body: str, heading: str) -> str:
    """README text with ``body`` between the markers of ``name``, adding the section if missing."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(readme_text):
        return pattern.sub(lambda _: block, readme_text, count=1)
    if readme_text and not readme_text.endswith("\n"):
        readme_text += "\n"
    separator = "\n" if readme_text else ""
    return f"{readme_text}{separator}{heading}\n\n{block}\n"


def is_current(name: str, body: str, heading: str, readme: Path = README) -> bool:
    """True if the README's section already holds ``body``."""
    current = readme.read_text() if readme.exists() else ""
    return replace_section(current, name, body, heading) == current


def write(name: str, body: str, heading: str, readme: Path = README) -> bool:
    """Rewrite the section; True if the file changed."""
    current = readme.read_text() if readme.exists() else ""
    updated = replace_section(current, name, body, heading)
    if updated != current:
        readme.write_text(updated)
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
    argv: list[str] | None, *, description: str, name: str, render: Callable[[], str], heading: str
) -> int:
    """The command line every generator shares: rewrite the section, or ``--check`` it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    if parser.parse_args(argv).check:
        if is_current(name, render(), heading):
            return 0
        print(f"README.md section {name} is stale: run python {sys.argv[0]}")
        return 1
    if write(name, render(), heading):
        print(f"updated {README.relative_to(REPO)}")
    return 0
