"""Old module paths (``pipeline.MOVED_MODULES``): each still imports and warns, naming its new home and the
version that removes it; nothing of the project itself uses one (its code, the app, the scripts, the tests
and the bundle's configs import the new homes only)."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import REPO_ROOT

import pipeline

OLD_PATHS = sorted(f"pipeline.{old}" for old in pipeline.MOVED_MODULES)
OWN_WARNING = r"pipeline\.[\w.]+ is deprecated and will be removed in lggseg "
"""The start of the shim's warning (``warnings`` filters match messages from their start)."""
_OLD_PATH = re.compile(
    r"\bpipeline\.(?:"
    + "|".join(re.escape(o) for o in sorted(pipeline.MOVED_MODULES, key=len)[::-1])
    + r")\b"
    r"(?![\w])"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _project_files() -> list[Path]:
    files = [
        *(REPO_ROOT / "pipeline").rglob("*.py"),
        *(REPO_ROOT / "apps").rglob("*.py"),
        *(REPO_ROOT / "scripts").glob("*.py"),
    ]
    files += [p for p in (REPO_ROOT / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve()]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module path an import statement or ``importlib.import_module("...")`` names, with its line."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append((node.lineno, node.args[0].value))
    return names


def _is_old(name: str) -> bool:
    return any(name == old or name.startswith(old + ".") for old in OLD_PATHS)


def test_no_project_file_imports_an_old_module_path():
    found = []
    for path in _project_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [
            f"{path.relative_to(REPO_ROOT)}:{line}: {name}"
            for line, name in _imported_names(tree)
            if _is_old(name)
        ]
    assert not found, "old module paths imported:\n" + "\n".join(found)


def test_no_bundle_config_names_an_old_module_path():
    found = []
    for path in sorted((REPO_ROOT / "bundle" / "configs").glob("*.json")):
        json.loads(path.read_text())  # valid JSON
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.name}:{number}: {m.group(0)}" for m in _OLD_PATH.finditer(line)]
    assert not found, "old module paths in the bundle's configs:\n" + "\n".join(found)


@pytest.mark.parametrize("old", OLD_PATHS)
def test_each_old_path_still_imports_and_warns_with_the_version_of_removal(old):
    assert _version(pipeline.REMOVED_IN) > _version(pipeline.__version__)
    saved = sys.modules.pop(old, None)
    try:
        with pytest.warns(DeprecationWarning) as caught:
            module = importlib.import_module(old)
        messages = [str(w.message) for w in caught if re.match(OWN_WARNING, str(w.message))]
        assert len(messages) == 1, [str(w.message) for w in caught]
        homes = pipeline.MOVED_MODULES[old.removeprefix("pipeline.")]
        homes = (homes,) if isinstance(homes, str) else homes
        assert messages[0] == (
            f"{old} is deprecated and will be removed in lggseg {pipeline.REMOVED_IN}; import from "
            f"{' / '.join(homes)}"
        )
        targets = [importlib.import_module(home) for home in homes]
        name = next(n for t in targets for n in dir(t) if not n.startswith("_"))
        owner = next(t for t in targets if hasattr(t, name))
        assert getattr(module, name) is getattr(owner, name)  # the alias forwards to the new home
    finally:
        if saved is not None:
            sys.modules[old] = saved
        else:
            sys.modules.pop(old, None)


_IMPORT_EVERYTHING = """
import importlib, importlib.util, pathlib, sys, warnings
repo = pathlib.Path({repo!r})
warnings.filterwarnings("error", message={pattern!r}, category=DeprecationWarning)
sys.path[:0] = [str(repo), str(repo / "apps" / "lggseg"), str(repo / "scripts")]
failed = []
def attempt(name, load):
    try:
        load()
    except DeprecationWarning as warning:
        failed.append(f"{{name}}: {{warning}}")
for path in sorted((repo / "pipeline").rglob("*.py")):
    if path.name == "__main__.py" or "__pycache__" in path.parts:
        continue
    parts = path.relative_to(repo).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    attempt(name, lambda name=name: importlib.import_module(name))
for path in sorted((repo / "apps" / "lggseg" / "lib").glob("*.py")):
    name = "lib" if path.stem == "__init__" else f"lib.{{path.stem}}"
    attempt(name, lambda name=name: importlib.import_module(name))
attempt("main (the app)", lambda: importlib.import_module("main"))
for path in sorted((repo / "scripts").glob("*.py")):
    def load(path=path):
        spec = importlib.util.spec_from_file_location(f"script_{{path.stem}}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    attempt(f"scripts/{{path.name}}", load)
print("\\n".join(failed) if failed else "OK")
"""


@pytest.mark.slow
def test_importing_every_project_module_uses_no_old_path():
    """A fresh interpreter imports every module of the package, the app and the scripts with lggseg's own
    deprecation warnings turned into errors: none may go through the alias of an old path."""
    code = _IMPORT_EVERYTHING.format(repo=str(REPO_ROOT), pattern=OWN_WARNING)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "OK", done.stdout[-3000:]


def test_the_warning_filter_matches_the_shims_own_message():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=OWN_WARNING, category=DeprecationWarning)
        saved = sys.modules.pop("pipeline.report", None)
        try:
            with pytest.raises(DeprecationWarning, match="will be removed in lggseg"):
                importlib.import_module("pipeline.report")
        finally:
            sys.modules.pop("pipeline.report", None)
            if saved is not None:
                sys.modules["pipeline.report"] = saved
