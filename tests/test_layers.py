"""The package's layers: every import inside `cleaner` runs downward. A module may import its own package and the
layers below its own, never its layer's neighbours or anything above; the lab (a toy task, its model, its trainer)
is a leaf that only entry points (`__main__` modules) and the harness may import. Imports inside functions count
too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CLEANER = Path(__file__).resolve().parents[1] / "cleaner"

LAYERS = [
    {"trajectory", "registry", "stats", "seeds"},
    {"chat", "data", "similarity", "rewards", "rl", "tracking", "smollm2"},
    {"saar", "sandbox"},
    {"rollout", "metrics", "purify"},
    {"recipe"},
    {"bench", "lab"},
    {"models", "verl_plugin"},
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def imports() -> list[tuple[str, bool, str, str]]:
    """(importing unit, whether the module is an entry point, imported unit, file:line) for every `cleaner`
    import that leaves its own unit (a top-level module or package of `cleaner`)."""
    out = []
    for path in sorted(CLEANER.rglob("*.py")):
        parts = path.relative_to(CLEANER).with_suffix("").parts
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cleaner":
                names = node.module.split(".")[1:2] or [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("cleaner.")]
            else:
                continue
            for name in names:
                if name != unit:
                    out.append((unit, parts[-1] == "__main__", name, f"{path.relative_to(CLEANER)}:{node.lineno}"))
    return out


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in CLEANER.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert units == set(LEVEL), "place new modules in LAYERS"


def test_imports_run_downward_and_the_lab_is_a_leaf():
    upward = [f"{where}: {unit} imports {name}" for unit, entry, name, where in imports()
              if not entry and LEVEL[name] >= LEVEL[unit]]
    assert upward == []
    into_lab = [where for unit, entry, name, where in imports() if name == "lab" and not entry]
    assert into_lab == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The scan itself: an import of the lab from the rollout, even inside a function, is reported."""
    for unit in ("rollout", "lab"):
        (tmp_path / unit).mkdir()
        (tmp_path / unit / "__init__.py").write_text("")
    (tmp_path / "rollout" / "x.py").write_text("def f():\n    from cleaner.lab import tasks\n")
    monkeypatch.setattr(sys.modules[__name__], "CLEANER", tmp_path)
    assert imports() == [("rollout", False, "lab", "rollout/x.py:2")]
