"""Composing the harness's configs in process, as the entry points do."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from harness import cli


@pytest.fixture
def composed():
    """composed(overrides, config_name="train", hydra=False) -> the composed config (with `hydra` if asked)."""

    def compose_run(overrides=(), config_name="train", hydra=False):
        with initialize_config_dir(str(cli.CONF), version_base="1.3"):
            return compose(config_name, overrides=[*overrides, cli.searchpath_override()], return_hydra_config=hydra)

    return compose_run


@pytest.fixture
def bench_math_root(tmp_path_factory, monkeypatch):
    """CLEANER_DATA_ROOT set to small files for data=bench_math's sets (aime24, aime25, math500: two problems each)
    in cleaner.data's layout: for tests that need some valid file, not the real benchmarks. Subprocesses inherit it."""
    root = tmp_path_factory.mktemp("bench_data")  # outside tmp_path, which tests use as an empty runs_root
    rows = {"aime24/test.jsonl": [{"id": i, "problem": f"Find {i} + 1.", "answer": str(i + 1), "url": "",
                                   "solution": ""} for i in (1, 2)],
            "aime25/aime25.jsonl": [{"prompt": f"Find {i} + 2.", "answer": i + 2} for i in (1, 2)],
            "math500/test.jsonl": [{"problem": f"Find 10 // {i}.", "answer": str(10 // i),
                                    "unique_id": f"test/{i}.json", "subject": "Algebra", "level": 1, "solution": ""}
                                   for i in (1, 2)]}
    for rel, lines in rows.items():
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text("".join(json.dumps(row) + "\n" for row in lines))
    monkeypatch.setenv("CLEANER_DATA_ROOT", str(root))
    return root
