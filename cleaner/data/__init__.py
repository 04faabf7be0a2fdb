"""Benchmark and training-set loaders: `load(name, path=None, data_root=None) -> list[Problem]`.

Registry (`DATASETS`): aime24, aime25, math500, aime_1983_2023 (evaluation / extra math), dapo_math_17k (RL
training), gpqa_diamond and livecodebench_v6 (user-supplied files only). Formats: see `math_sets`, `gpqa`,
`livecodebench`; the verl parquet format is accepted wherever the upstream one is.

Where the file comes from (`resolve_path`), first match wins:
1. `path`, when given;
2. else a data root: the `data_root` argument, else the `CLEANER_DATA_ROOT` environment variable, else
   `../shared/data` beside the repository when that folder exists; joined with the set's relative file
   (`DataSet.relpath`, the layout of `shared/data`, or of Open-AgentRL-Eval for GPQA and LiveCodeBench).
The first source that is set is used: a data root that lacks the file is an error, not a reason to look further,
so a run never silently reads another copy. Nothing is downloaded; when no file is found the `DataError` names
the three ways to supply one (a path, a data root, the public data set to download yourself when online).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cleaner.data import math_sets
from cleaner.data.gpqa import gpqa_problems
from cleaner.data.livecodebench import lcb_problems
from cleaner.data.rows import DataError, Problem, read_rows
from cleaner.registry import Registry

__all__ = ["DATASETS", "DataError", "DataSet", "Problem", "kind_of", "load", "resolve_path"]

ENV_DATA_ROOT = "CLEANER_DATA_ROOT"
SHARED_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # read at call time (tests patch it)


@dataclass(frozen=True)
class DataSet:
    """One registered data set."""

    relpath: str  # its file under a data root
    online: str  # the public data set (Hugging Face id) to download yourself when online
    formats: str  # the formats it accepts, for error messages
    parse: Callable[[str, Path, list[dict]], list[Problem]]  # (name, path, rows) -> problems
    kind: str = "math"  # how its answers are graded: math (a boxed value), choice (a letter), code (tests)
    shared: bool = True  # whether ../shared/data holds a copy


DATASETS = Registry("data set")
_VERL = "verl parquet (prompt chat list, reward_model.ground_truth)"
DATASETS.update({
    "aime24": DataSet("aime24/test.jsonl", "HuggingFaceH4/aime_2024",
                      f"Qwen2.5-Math jsonl (id, problem, answer, url, solution) or {_VERL}",
                      partial(math_sets.math_problems, upstream=math_sets.AIME24)),
    "aime25": DataSet("aime25/aime25.jsonl", "math-ai/aime25",
                      f"QwQ jsonl (prompt, answer) or {_VERL}",
                      partial(math_sets.math_problems, upstream=math_sets.AIME25)),
    "math500": DataSet("math500/test.jsonl", "HuggingFaceH4/MATH-500",
                       f"jsonl (problem, answer, unique_id, subject, level, solution) or {_VERL}",
                       partial(math_sets.math_problems, upstream=math_sets.MATH500)),
    "dapo_math_17k": DataSet("dapo_math_17k/dapo_math_17k.parquet", "BytedTsinghua-SIA/DAPO-Math-17k", _VERL,
                             partial(math_sets.math_problems, upstream=None)),
    "aime_1983_2023": DataSet("aime_1983_2023/aime.json",
                              "agentica-org/DeepScaleR-Preview-Dataset (its GitHub repository's "
                              "deepscaler/data/train/aime.json)",
                              "DeepScaleR json list (problem, answer, year, aime_number, problem_number, solution, "
                              f"difficulty) or {_VERL}",
                              partial(math_sets.math_problems, upstream=math_sets.AIME_1983_2023)),
    "gpqa_diamond": DataSet("gpqa-diamond/gpqa_diamond.parquet", "Gen-Verse/Open-AgentRL-Eval (or Idavidrein/gpqa)",
                            "GPQA csv/parquet (Question, Correct Answer, Incorrect Answer 1..3) or "
                            f"{_VERL} with the gold letter", gpqa_problems, kind="choice", shared=False),
    "livecodebench_v6": DataSet("livecodebench-v6/lcb_v6_2502_2505.parquet",
                                "Gen-Verse/Open-AgentRL-Eval (or livecodebench/code_generation_lite)",
                                "code_generation_lite rows (question_content, question_id, public_test_cases, "
                                f"private_test_cases, metadata, ...) or {_VERL} with JSON tests",
                                lcb_problems, kind="code", shared=False),
})


def kind_of(name: str) -> str:
    """How the data set `name` is graded (`DataSet.kind`); an unknown name is an error listing the valid ones."""
    return DATASETS[name].kind


def resolve_path(name: str, path: str | Path | None = None, data_root: str | Path | None = None) -> Path:
    """The file `load` reads for `name` (module docstring); a `DataError` naming all three ways if none is found."""
    spec = DATASETS[name]
    if path is not None:
        return Path(path)
    root = data_root if data_root is not None else os.environ.get(ENV_DATA_ROOT) or None
    if root is None and SHARED_ROOT.is_dir():
        root = SHARED_ROOT
    candidate = Path(root) / spec.relpath if root is not None else None
    if candidate is not None and candidate.is_file():
        return candidate
    tried = (f"{candidate} does not exist" if candidate is not None
             else f"no data root is set and {SHARED_ROOT} is absent")
    shared = "" if spec.shared else " There is no shared copy of this set; supply your own file."
    raise DataError(
        f"{name}: no data file found ({tried}).{shared} Supply one of three ways:\n"
        f"  1. an explicit path: load({name!r}, path=FILE) ({spec.formats});\n"
        f"  2. a data root holding {spec.relpath}: load({name!r}, data_root=DIR) or the environment variable "
        f"{ENV_DATA_ROOT}=DIR;\n"
        f"  3. when online, download the data set {spec.online} yourself and pass its file as path "
        f"(nothing is downloaded automatically).")


def load(name: str, path: str | Path | None = None, data_root: str | Path | None = None) -> list[Problem]:
    """All problems of data set `name`, in file order, from the file `resolve_path` finds."""
    spec = DATASETS[name]
    file = resolve_path(name, path, data_root)
    try:
        return spec.parse(name, file, read_rows(file))
    except DataError as e:
        message = str(e) if str(e).startswith(str(file)) else f"{file}: {e}"
        raise DataError(f"{message}\nexpected for {name}: {spec.formats}") from None
