"""The pipeline files a stage runs: its main module's import closure (every import, function-level too) plus the
modules skops loads by name when a model is read (pipeline.model.TRUSTED_TYPES). Stage tests compare it with the
stage's ``deps:`` in dvc.yaml, so the declared code deps are exactly what the stage reads."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT


def _module_file(name: str) -> Path | None:
    path = REPO_ROOT / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def import_closure(*modules: str) -> set[str]:
    """Repository-relative paths of every pipeline file the modules import, directly or not."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        file = _module_file(name)
        if file is None or file in seen:
            continue
        seen.add(file)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
                todo += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("pipeline")]
    return {file.relative_to(REPO_ROOT).as_posix() for file in seen}


def stage_code(main_module: str) -> set[str]:
    from pipeline.model import TRUSTED_TYPES

    loaded = {name.rsplit(".", 1)[0] for name in TRUSTED_TYPES if name.startswith("pipeline.")}
    return import_closure(main_module, *loaded)


def uncovered(files: set[str], deps: list[str]) -> tuple[set[str], set[str]]:
    """(files no dep covers, pipeline deps that cover no file): both empty when the deps are exact."""
    code = [d for d in deps if d.startswith("pipeline")]
    missing = {f for f in files if not any(f == d or f.startswith(f"{d}/") for d in code)}
    extra = {d for d in code if not any(f == d or f.startswith(f"{d}/") for f in files)}
    return missing, extra
