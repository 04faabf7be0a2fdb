"""Benchmark and training-set loaders: `load(name, path=None, data_root=None) -> list[Problem]`.

Registry (`DATASETS`): aime24, aime25, math500, aime_1983_2023 (evaluation / extra math), dapo_math_17k (RL
training), gpqa_diamond and livecodebench_v6 (user-supplied files only). Formats: see `math_sets`, `gpqa`,
`livecodebench`; the verl parquet format is accepted wherever the upstream one is.

Where the file comes from (`resolve_path`), first match wins:
1. `path`, when given;
2. else the `data_root` argument, else the `CLEANER_DATA_ROOT` environment variable: a data root, joined with the
   set's relative file (`DataSet.relpath`); a root that is set but lacks the file is an error, not a reason to
   look further, so a run never silently reads another copy;
3. else the default folders, the first that holds the file: `<repository>/data` (`DOWNLOAD_ROOT`, where
   `python -m harness.prepare_data NAME` downloads) then `../shared/data` beside the repository (`SHARED_ROOT`,
   a local copy that only development machines have). `<repository>` is the folder above the `cleaner` package,
   i.e. a checkout or an editable install.
The relative files follow the layout of `shared/data` (for GPQA and LiveCodeBench, of Open-AgentRL-Eval). When
no file is found the `DataError` names every way to supply one: the download command (for the sets with a pinned
public copy, `DataSet.source`), a data root, an explicit path; for GPQA-Diamond and LiveCodeBench v6, which are
not downloaded by name, where to get the file. Nothing is downloaded while loading: `load` only reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cleaner.data import math_sets
from cleaner.data.download import ByHand, Download
from cleaner.data.gpqa import gpqa_problems
from cleaner.data.livecodebench import lcb_problems
from cleaner.data.rows import DataError, Problem, read_rows
from cleaner.registry import Registry

__all__ = ["DATASETS", "ByHand", "DataError", "DataSet", "Download", "Problem", "by_hand_message", "kind_of", "load",
           "resolve_path"]

ENV_DATA_ROOT = "CLEANER_DATA_ROOT"
REPOSITORY = Path(__file__).resolve().parents[2]
# the default folders, in order; read at call time (tests patch them)
DOWNLOAD_ROOT = REPOSITORY / "data"  # where python -m harness.prepare_data NAME downloads (git-ignored)
SHARED_ROOT = REPOSITORY.parent / "shared" / "data"  # a local copy beside the repository, on development machines


@dataclass(frozen=True)
class DataSet:
    """One registered data set."""

    relpath: str  # its file under a data root
    source: Download | ByHand  # the pinned public file prepare_data downloads, or why not and where to get it
    formats: str  # the formats it accepts, for error messages
    parse: Callable[[str, Path, list[dict]], list[Problem]]  # (name, path, rows) -> problems
    kind: str = "math"  # how its answers are graded: math (a boxed value), choice (a letter), code (tests)


DATASETS = Registry("data set")
_VERL = "verl parquet (prompt chat list, reward_model.ground_truth)"
# The pinned public copies (`download.Download`): a file of a GitHub repository at a full commit id, its SHA-256 and
# size, byte for byte the file the loaders and their tests were written against.
DATASETS.update({
    "aime24": DataSet("aime24/test.jsonl",
                      Download("QwenLM/Qwen2.5-Math", "a45202bd16f1ec06f433442dc1152d0074773465",
                               "evaluation/data/aime24/test.jsonl",
                               "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", 156_944),
                      f"Qwen2.5-Math jsonl (id, problem, answer, url, solution) or {_VERL}",
                      partial(math_sets.math_problems, upstream=math_sets.AIME24)),
    "aime25": DataSet("aime25/aime25.jsonl",
                      Download("QwenLM/QwQ", "620a5eadc89ff464d339367dd9c9973a93215c81", "eval/data/aime25.jsonl",
                               "9da60057135388687f3c594476b211538d0be8e7f3b2de6e680513281412c0ec", 15_785),
                      f"QwQ jsonl (prompt, answer) or {_VERL}",
                      partial(math_sets.math_problems, upstream=math_sets.AIME25)),
    "math500": DataSet("math500/test.jsonl",
                       Download("hkust-nlp/simpleRL-reason", "cf1c7858bfc145a27aa733e75d930d34f0d318a6",
                                "examples/simplelr_math_eval/data/math500/test.jsonl",
                                "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132", 446_564),
                       f"jsonl (problem, answer, unique_id, subject, level, solution) or {_VERL}",
                       partial(math_sets.math_problems, upstream=math_sets.MATH500)),
    "dapo_math_17k": DataSet("dapo_math_17k/dapo_math_17k.parquet",
                             Download("MasterVito/SvS", "9fd8f35375b31b8632b52e715296c264a3ad4176",
                                      "data/dapo_math_17k.parquet",
                                      "246ae23df97c9eae8126cb4da780e9a0a31d10110e16eed144bcecbf2132d535", 2_773_999),
                             _VERL, partial(math_sets.math_problems, upstream=None)),
    "aime_1983_2023": DataSet("aime_1983_2023/aime.json",
                              Download("agentica-project/deepscaler", "95ef74ffee001cce89463f2d61dfdce1d03576c1",
                                       "deepscaler/data/train/aime.json",
                                       "78f1b9bae6d00794b43e79a5842917f7ef4e355d9b705743c61f255f3c7c5d49",
                                       1_289_048),
                              "DeepScaleR json list (problem, answer, year, aime_number, problem_number, solution, "
                              f"difficulty) or {_VERL}",
                              partial(math_sets.math_problems, upstream=math_sets.AIME_1983_2023)),
    "gpqa_diamond": DataSet("gpqa-diamond/gpqa_diamond.parquet",
                            ByHand("its authors ask that it not be redistributed in plain text",
                                   "the Hugging Face data set Gen-Verse/Open-AgentRL-Eval (or the gated "
                                   "Idavidrein/gpqa)"),
                            "GPQA csv/parquet (Question, Correct Answer, Incorrect Answer 1..3) or "
                            f"{_VERL} with the gold letter", gpqa_problems, kind="choice"),
    "livecodebench_v6": DataSet("livecodebench-v6/lcb_v6_2502_2505.parquet",
                                ByHand("its hidden tests make it a large file on the Hugging Face hub",
                                       "the Hugging Face data set Gen-Verse/Open-AgentRL-Eval (or "
                                       "livecodebench/code_generation_lite)"),
                                "code_generation_lite rows (question_content, question_id, public_test_cases, "
                                f"private_test_cases, metadata, ...) or {_VERL} with JSON tests",
                                lcb_problems, kind="code"),
})


def kind_of(name: str) -> str:
    """How the data set `name` is graded (`DataSet.kind`); an unknown name is an error listing the valid ones."""
    return DATASETS[name].kind


def by_hand_message(name: str) -> str:
    """One line: why the set `name` (whose source is `ByHand`) is not downloaded, where to get it, how to pass it."""
    spec = DATASETS[name]
    return (f"{name} is not downloaded by name ({spec.source.why}): get {spec.relpath} from {spec.source.where}, "
            f"then pass its path (load({name!r}, path=FILE), data.eval_paths.{name}=FILE, "
            f"--eval {name}=FILE) or a data root holding it ({ENV_DATA_ROOT}=DIR with DIR/{spec.relpath})")


def _missing_message(name: str, tried: str, data_root: str | Path | None = None) -> str:
    """The `DataError` text for a set whose file was not found (`tried`: where it looked): every way to supply it.
    `data_root`: the root the caller passed, which the download command then names."""
    spec = DATASETS[name]
    ways = []
    if isinstance(spec.source, Download):
        command = f"python -m harness.prepare_data {name}"
        ways.append(f"download the pinned public copy: {command} --data-root {data_root}" if data_root is not None
                    else f"download the pinned public copy: {command} (into "
                         f"{os.environ.get(ENV_DATA_ROOT) or DOWNLOAD_ROOT})")
        intro = ""
    else:
        intro = (f" It is not downloaded by name ({spec.source.why}): get {spec.relpath} from "
                 f"{spec.source.where} yourself.")
    ways.append(f"a data root holding {spec.relpath}: the environment variable {ENV_DATA_ROOT}=DIR, or "
                f"load({name!r}, data_root=DIR)")
    ways.append(f"an explicit path: load({name!r}, path=FILE), or data.eval_paths.{name}=FILE in a config "
                f"({spec.formats})")
    listed = "".join(f"\n  {i}. {way};" for i, way in enumerate(ways, 1))
    return f"{name}: no data file found ({tried}).{intro} Supply it one of {len(ways)} ways:{listed[:-1]}."


def resolve_path(name: str, path: str | Path | None = None, data_root: str | Path | None = None) -> Path:
    """The file `load` reads for `name` (module docstring); a `DataError` naming every way if none is found."""
    spec = DATASETS[name]
    if path is not None:
        return Path(path)
    env_root = os.environ.get(ENV_DATA_ROOT) or None
    if data_root is not None or env_root is not None:
        candidate = Path(data_root if data_root is not None else env_root) / spec.relpath
        if candidate.is_file():
            return candidate
        tried = f"{candidate} does not exist" + ("" if data_root is not None else f" ({ENV_DATA_ROOT} is set)")
        raise DataError(_missing_message(name, tried, data_root))
    candidates = [root / spec.relpath for root in (DOWNLOAD_ROOT, SHARED_ROOT)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = f"no data root is set, and none of the default files exists: {', '.join(map(str, candidates))}"
    raise DataError(_missing_message(name, tried))


def load(name: str, path: str | Path | None = None, data_root: str | Path | None = None) -> list[Problem]:
    """All problems of data set `name`, in file order, from the file `resolve_path` finds."""
    spec = DATASETS[name]
    file = resolve_path(name, path, data_root)
    try:
        return spec.parse(name, file, read_rows(file))
    except DataError as e:
        message = str(e) if str(e).startswith(str(file)) else f"{file}: {e}"
        raise DataError(f"{message}\nexpected for {name}: {spec.formats}") from None
