"""The README stays a short front door whose links all lead somewhere.

MkDocs checks the links inside `docs/` (`make docs`, strict); the README is not part of that
site, so its links are checked here.
"""

from __future__ import annotations

import re

from circuitgate_devkit.paths import REPO

README = REPO / "README.md"
# [text](target): the targets that are paths in this repository (no scheme, no bare anchor).
LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def test_the_readme_is_at_most_150_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move the detail to docs/"


def test_every_relative_link_in_the_readme_exists() -> None:
    targets = LINK.findall(README.read_text())
    assert targets, "README.md links to no file: the pattern no longer matches its links"
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_each_distribution_ships_the_repository_license_unchanged() -> None:
    """The wheels carry LICENSE from their own folder: a copy that must not drift."""
    for folder in ("worker", "operator"):
        assert (REPO / folder / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()
