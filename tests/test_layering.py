"""The house rules of the layout, checked from the source: who may import whom.

The episode is the one core contract; adapters and trainers import it, never the reverse. The
sandbox knows no model and no task; tasks are data (no engines); rewards get their model passed
in (no engines). A rule broken here is a design regression even when every other test passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RULES: dict[str, tuple[str, ...]] = {
    "rlm_env/sandbox": ("rlm_env.tasks", "rlm_env.models", "rlm_env.episode", "rewards", "training"),
    "rlm_env/tasks": ("rlm_env.models", "rlm_env.episode", "rewards", "training"),
    "rewards": ("rlm_env.models", "training"),
    "rlm_env/episode": ("rlm_env.adapters", "rlm_env.collect", "rlm_env.viewer", "rewards", "training"),
    "rlm_env/models": ("rlm_env.episode", "rlm_env.tasks", "rewards", "training"),
}
"""Folder -> module prefixes its code must never import."""


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports, at any depth (lazy imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def check_layer(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    """'file imports module' for every forbidden import under `folder`."""
    problems = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
    return problems


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_imports_only_what_it_may(folder):
    assert check_layer(folder, RULES[folder]) == []


def test_check_layer_finds_a_forbidden_import(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from rlm_env.models.base import ModelError\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert check_layer("pkg", ("rlm_env.models",)) == ["pkg/a.py imports rlm_env.models.base"]
