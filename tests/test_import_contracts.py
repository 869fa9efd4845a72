"""The layering of ``ARCHITECTURE.md``: ``lint-imports`` keeps every contract of ``setup.cfg``, the bundle's
configs name only modules that one of them covers, and no module of the package imports a script by name."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import grimp
from helpers import REPO_ROOT

CONTRACTS = configparser.ConfigParser()
CONTRACTS.read(REPO_ROOT / "setup.cfg")


def _contract(name: str) -> configparser.SectionProxy:
    return CONTRACTS[f"importlinter:contract:{name}"]


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def test_lint_imports_keeps_every_contract():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    kept = re.search(r"Contracts: (\d+) kept, (\d+) broken", done.stdout)
    assert kept and int(kept.group(2)) == 0, done.stdout[-4000:]
    assert int(kept.group(1)) == len(
        [s for s in CONTRACTS.sections() if s.startswith("importlinter:contract:")]
    )


def test_the_layers_contract_holds_every_part_of_the_package():
    layers = {part.strip() for line in _lines(_contract("layers")["layers"]) for part in line.split("|")}
    package = REPO_ROOT / "pipeline"
    parts = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    parts |= {p.parent.name for p in package.glob("*/__init__.py")}
    assert layers == parts
    assert _contract("layers")["exhaustive"] == "True"  # a new part fails lint-imports until it has a layer


def test_the_bundle_configs_name_only_the_entry_points_of_the_contract():
    covered = _lines(_contract("bundle-entry-points")["source_modules"])
    named = set()
    for path in sorted((REPO_ROOT / "bundle" / "configs").glob("*.json")):
        named |= set(re.findall(r"\bpipeline(?:\.[A-Za-z_]\w*)+", json.dumps(json.loads(path.read_text()))))
    assert named, "no pipeline module named in the bundle's configs"
    uncovered = sorted(n for n in named if not any(n == c or n.startswith(c + ".") for c in covered))
    assert not uncovered, f"named by the bundle's configs, not in the contract: {uncovered}"
    assert not [n for n in named if n == "pipeline.cli" or n.startswith("pipeline.cli.")]


def test_no_module_of_the_package_imports_a_script_or_the_app_by_name():
    """pytest puts ``scripts/`` on ``sys.path`` (pyproject's ``pythonpath``): an import of a script by its own
    name would pass the tests and fail for a user; the app's package is ``lib`` (and ``main``)."""
    graph = grimp.build_graph("pipeline", include_external_packages=True, cache_dir=None)
    outside = {m for m in graph.modules if m != "pipeline" and not m.startswith("pipeline.")}
    faces = {p.stem for p in (REPO_ROOT / "scripts").glob("*.py")} | {"lib", "main", "apps", "scripts"}
    assert not outside & faces
