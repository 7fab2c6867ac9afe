"""dvc.yaml's code deps of each stage match the code the stage runs, derived from the imports of its entry module.

Each stage runs ``python -m pipeline <stage>``, whose command imports ``pipeline.<stage>`` and calls its ``main``.
Walking that module's ``pipeline`` imports (module level and function level, not ``TYPE_CHECKING`` blocks) gives
every file of the package the stage executes; dvc.yaml must list each of them (a file or an enclosing folder), and
every ``pipeline/`` dep it lists must be one of them (or a folder holding one), so an edit reruns exactly the
stages that read the edited code.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipeline.modelling.bundle import TRUSTED_TYPES

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "pipeline"
# Invocation and error plumbing: they run in every stage but change no output a stage writes
# (the command line, the exit codes and messages, where the project root is).
PLUMBING = {"pipeline/__main__.py", "pipeline/cli.py", "pipeline/errors.py", "pipeline/paths.py"}

# Modules a module loads by name rather than by an import statement: skops imports the package's own estimator
# classes (the trusted types) when it loads a bundle, so a stage that loads a model runs their code.
DYNAMIC_IMPORTS = {
    "pipeline.modelling.bundle": {t.rpartition(".")[0] for t in TRUSTED_TYPES if t.startswith("pipeline.")},
}

# Package files a stage reads as data, not as code: the train stage copies pyfunc.py into every model it saves
# (MLflow's models from code), so an edit to it changes the saved model.
FILES_READ = {"train": {"pipeline/modelling/pyfunc.py"}}

# Expected gaps, each with its reason (none today: every stage's deps match its imports). A stage being rewritten
# may add an entry here for the duration; the test then holds the rest exactly.
# stage -> (files the stage imports that dvc.yaml does not list, dvc.yaml deps the stage does not import)
EXPECTED_GAPS: dict[str, tuple[set[str], set[str]]] = {}


def _module_file(module: str) -> Path | None:
    """``pipeline.a.b`` -> pipeline/a/b.py or pipeline/a/b/__init__.py; None outside the package."""
    if module != "pipeline" and not module.startswith("pipeline."):
        return None
    base = REPO_ROOT.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_modules(path: Path) -> set[str]:
    """Every ``pipeline`` module ``path`` imports when it runs (``from pkg import sub`` names ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    package = package.removesuffix(".__init__") if path.name == "__init__.py" else package.rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for child in node.body for n in ast.walk(child)}  # fmt: skip
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}"))
    return {m for m in found if _module_file(m)}


@cache
def _closure(entry: str) -> frozenset[str]:
    """Repository-relative files the stage executes: ``entry``, everything it imports, and their packages."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # a submodule runs its package __init__
        path = _module_file(module)
        if path is not None:
            todo.extend((_imported_modules(path) | DYNAMIC_IMPORTS.get(module, set())) - seen)
    files = {str(_module_file(m).relative_to(REPO_ROOT)) for m in seen if _module_file(m)}
    # importing any pipeline module runs the (tiny) top-level __init__; it counts only when named explicitly
    return frozenset(files - PLUMBING - ({"pipeline/__init__.py"} - _explicit_init(seen)))


def _explicit_init(modules: set[str]) -> set[str]:
    """pipeline/__init__.py when some module does ``from pipeline import <name that is not a module>``."""
    for module in modules:
        path = _module_file(module)
        if path is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            from_package = isinstance(node, ast.ImportFrom) and node.module == "pipeline" and node.level == 0
            if from_package and any(_module_file(f"pipeline.{alias.name}") is None for alias in node.names):
                return {"pipeline/__init__.py"}
    return set()


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _entry(stage: dict) -> str:
    words = stage["cmd"].split()
    assert words[:3] == ["python", "-m", "pipeline"], f"unexpected command {stage['cmd']!r}"
    # a stage package's command runs its main module (pipeline/cli.py imports pipeline.<stage>.main)
    package_main = f"pipeline.{words[3]}.main"
    return package_main if _module_file(package_main) else f"pipeline.{words[3]}"


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def _gaps(name: str, stage: dict) -> tuple[set[str], set[str]]:
    code = _closure(_entry(stage)) | FILES_READ.get(name, set())
    deps = [d for d in stage.get("deps", []) if d.startswith("pipeline/")]
    missing = {f for f in code if not _covered(f, deps)}
    unused = {d for d in deps if not any(_covered(f, [d]) for f in code)}
    return missing, unused


@pytest.mark.parametrize("name", sorted(_stages()))
def test_dvc_deps_cover_exactly_the_code_each_stage_imports(name: str) -> None:
    missing, unused = _gaps(name, _stages()[name])
    expected_missing, expected_unused = EXPECTED_GAPS.get(name, (set(), set()))
    assert missing == expected_missing, f"{name}: imported but not in dvc.yaml deps: {sorted(missing)}"
    assert unused == expected_unused, f"{name}: dvc.yaml deps the stage never imports: {sorted(unused)}"


def test_the_import_walk_follows_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """The walk itself: a lazy import counts (the stage runs it), a TYPE_CHECKING import does not."""
    closure = _closure("pipeline.protocol")
    assert "pipeline/protocol.py" in closure
    assert "pipeline/sample_size.py" in closure  # protocol imports it
    # protocol names the train params only under TYPE_CHECKING: not a dependency
    assert "pipeline/modelling/params.py" not in closure
    assert "pipeline/modelling/training.py" in _closure("pipeline.train")
    assert "pipeline/modelling/__init__.py" in _closure("pipeline.train")  # a submodule runs its package


def test_a_cleaning_edit_does_not_rerun_the_generator() -> None:
    """The generator and the cleaner share only the bottom floor (outcome definitions, contract, scales): an edit to
    harmonisation, the quarantine or a source adapter leaves `synthesize` up to date."""
    closure = _closure(_entry(_stages()["synthesize"]))
    cleaning = {
        "pipeline/harmonise.py",
        "pipeline/harmonise_values.py",
        "pipeline/harmonise_outcomes.py",
        "pipeline/harmonise_validate.py",
        "pipeline/clean.py",
        "pipeline/quarantine.py",
        "pipeline/missing.py",
    }
    assert "pipeline/outcomes.py" in closure
    assert not closure & cleaning
    assert not {f for f in closure if f.startswith("pipeline/sources/")} - {
        "pipeline/sources/__init__.py",
        "pipeline/sources/spec.py",
    }
