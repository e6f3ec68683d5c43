"""Each distribution imports, module by module, in an interpreter that sees only the standard
library, itself and what it declares (with their own dependencies): the JSON contract is the
only thing the worker and the operator share, and neither needs the dev kit."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from circuitgate_devkit.paths import REPO

DISTRIBUTIONS = {"circuitgate": "circuitgate", "circuitgate-operator": "circuitgate_operator"}
SOURCES = {"circuitgate": REPO / "worker", "circuitgate-operator": REPO / "operator"}
OPTIONAL = {"circuitgate": {"torch", "pynvml"}, "circuitgate-operator": set()}
"""Imported only where already installed (``circuitgate.probes.cuda_device`` looks first)."""

_PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    root = importlib.import_module(sys.argv[1])
    names = [root.__name__]
    names += [m.name for m in pkgutil.walk_packages(root.__path__, root.__name__ + ".")]
    for name in names:
        importlib.import_module(name)
    print(len(names))
    """
)


_LOCATE = textwrap.dedent(
    """
    import importlib.util, os, sys

    for name in sys.argv[1:]:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin not in (None, "built-in", "frozen"):
            origin = spec.origin
            print(os.path.dirname(origin) if spec.submodule_search_locations else origin)
    """
)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(distribution: str) -> set[str]:
    """``distribution`` and everything its (non-extra) requirements pull in, by name."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def _visible_tree(distribution: str, into: Path) -> set[str]:
    """Links in ``into`` to the top-level modules of the closure's distributions only."""
    modules = {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(_normal(owner) in _closure(distribution) for owner in owners)
    }
    # Located by a fresh interpreter: this one may hold modules Celery has rewritten.
    located = subprocess.run(
        [sys.executable, "-c", _LOCATE, *sorted(modules | {DISTRIBUTIONS[distribution]})],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    for source in map(Path, located):
        (into / source.name).symlink_to(source)
    return modules


@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
def test_every_module_imports_with_only_what_its_distribution_declares(
    distribution: str, tmp_path: Path
) -> None:
    package = DISTRIBUTIONS[distribution]
    visible = _visible_tree(distribution, tmp_path)
    assert not ({"circuitgate_devkit", *DISTRIBUTIONS.values()} - {package}) & visible
    run = subprocess.run(
        # -S: no site-packages; -I: no user site, no PYTHONPATH, no cwd on sys.path.
        [sys.executable, "-S", "-I", "-c", f"import sys; sys.path.append({str(tmp_path)!r})\n"
         + _PROBE, package],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 5, f"walked only {run.stdout.strip()} modules of {package}"


def _imported_top_levels(package_dir: Path) -> set[str]:
    names = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
def test_every_third_party_import_is_a_direct_requirement(distribution: str) -> None:
    """Not merely pulled in by another dependency: a package imported by name is declared."""
    package = DISTRIBUTIONS[distribution]
    declared = {
        _normal(Requirement(r).name) for r in importlib.metadata.requires(distribution) or []
    }
    owners = importlib.metadata.packages_distributions()
    imported = _imported_top_levels(SOURCES[distribution] / package)
    third_party = imported - set(sys.stdlib_module_names) - {package, "__future__"}
    third_party -= OPTIONAL[distribution]
    undeclared = {
        module: owners.get(module, ["?"])
        for module in third_party
        if not {_normal(owner) for owner in owners.get(module, [])} & declared
    }
    assert not undeclared, f"{distribution} imports without declaring: {undeclared}"
