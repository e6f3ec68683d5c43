"""Generated sections of README.md: text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.

Shared by the reference generators so each one only renders its table.
"""

from __future__ import annotations

import re
from pathlib import Path

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
