"""Public benchmark files, downloaded by name into the data folder; user-supplied training and benchmark files ->
verl parquet for cluster=verl:

    python -m harness.prepare_data aime24 aime25 math500       (download the pinned public copies)
    python -m harness.prepare_data --out DIR --train Open-AgentRL-30K.parquet --eval aime24=FILE --eval gpqa_diamond=F
    python -m harness.prepare_data --out DIR --eval aime25       (cleaner.data finds the file: data root or default)
    python -m harness.prepare_data --out DIR --train Open-AgentRL-30K.parquet --filter STATS.jsonl   (the 7B set)

Downloads (positional NAMEs; with --train/--eval too, downloads come first, then the conversion). Each name is a
set of `cleaner.data.DATASETS` whose source is a `Download`: aime24, aime25, math500, dapo_math_17k,
aime_1983_2023, each one file of a public GitHub repository at a full commit id, checked by its SHA-256
(`cleaner.data.download`). It goes to `<data folder>/<DataSet.relpath>`, where the loaders look; the data folder is
`--data-root`, else the environment variable CLEANER_DATA_ROOT, else `<repository>/data` (git-ignored, the first
default folder of `cleaner.data.resolve_path`). CLEANER_DATA_MIRROR replaces `https://raw.githubusercontent.com`
(a mirror with the same layout). A file already there with the right checksum is skipped; with another checksum it
is refused and left as it is. Exit status: 0 done; 1 a download failed (server unreachable or other bytes than the
pinned ones: nothing is written, and the message names the URL and the offline way: CLEANER_DATA_ROOT=DIR holding
the file); 2 a name that is unknown or not downloadable (gpqa_diamond: its authors ask that it not be
redistributed; livecodebench_v6: large files with hidden tests on the Hugging Face hub; the message says where to
get the file and how to pass it), or a file in the way. All names are checked before anything is downloaded.

Conversion (`--out`): `python -m harness.train` with cluster=verl does the same itself, into the run's
`verl/data/` (the filter aside: point `data.train_path` at the filtered file). `--data-root` also tells `--eval
NAME` where to read.

Output: one parquet per input, `<out>/<name>.<chat format>.<first 12 hex of the input's SHA-256>.parquet`, so the
path follows from the input's content; a rerun converts again and leaves an identical existing file untouched
(an input that changed gets a new file). Every file has the same schema, one row per problem, the columns verl's
`RLHFDataset` reads:

    data_source   training: the row's own (math_dapo, mega-science, train-code-taco-easy, ...); a benchmark: its name
    prompt        the chat list the agent loop starts from: `cleaner.bench.prompt_messages` (the project's system
                  prompt for the chat format, the question, the task line of its kind)
    ability       the row's own `ability` when it has one, else the kind
    reward_model  {style: "rule", ground_truth: text}: math, the gold answer as written; choice (GPQA), the gold
                  letter; code, JSON tests (a benchmark: a list of {input, output, testtype}; a training row: its
                  own tests in their own layout, a list of tests or the APPS layout {inputs, outputs, fn_name?})
    extra_info    {index: row number, id, kind: math | choice | code, split: train | test, func_name, starter_code,
                  upstream: the rest of the row's own extra_info / the problem's metadata but its solution, as
                  JSON}
    agent_name    `cleaner.verl_plugin.AGENT_NAME`, so verl runs our agent loop for every row

Open-AgentRL-30K (`Gen-Verse/Open-AgentRL-30K`). Its card could not be read offline; its format here is inferred
from the code that consumes it (the CLEANER and DemyAgent training scripts read `prompt[0].content`,
`data_source`, `reward_model.ground_truth`, `ability`, `extra_info.index`; their code grader takes the ground truth
in the APPS or LeetCode layout, as JSON text, an object or a Python literal; a third-party converter also accepts
`reward_model` and `extra_info` stored as JSON strings). Accepted: rows (`.parquet`, `.jsonl`, `.json`) with
`data_source` (text), `prompt` (a chat list; the question is its last user message) and `reward_model` (an object,
or its JSON) holding `ground_truth` (a code row's tests in any of the grader's three forms, read by
`cleaner.data.livecodebench.decode_tests` and written as JSON);
`ability` and `extra_info` (an object, its JSON, or absent) are optional. A row is code when its data_source
contains "code" (the authors' rule), else math; a math question loses the known instruction wrappers
(`cleaner.data.math_sets.strip_instruction`). A code row's tests must be what the project's code grader reads
(`cleaner.data.livecodebench`, which the reward function uses): a row whose tests are LeetCode check functions
({import_prefix, test_code, entry_point}, which the authors' grader also handles) cannot be graded here and is
left out, and the count is reported; any other malformed row is an error. Benchmarks are read by
`cleaner.data.load`, in every format it accepts.

The 7B recipe's difficulty filter (`--filter STATS`; the paper trains 7B "on a difficulty-filtered set" and does
not say how): the authors' own filter, from their repository (`filter_dataset_by_statistics.py` with the shares of
their `data_filter.sh`). STATS holds per-prompt statistics, one JSON object per line with `uid` and `success_rate`
(the share of 8 rollouts that solved it; the authors' file, `Open-AgentRL-30K.filtered.parquet.success.jsonl` in
their repository, does not say which model rolled out). A row's uid is its `uid` column, else its row number. Rows
are grouped by success rate and by code or not; of each group a share is kept, `int(count x share)` rows drawn
without replacement with numpy's legacy generator seeded `42 + int(1000 x rate)` (code) or `43 + ...` (the rest),
the authors' draw, so the same files give the authors' subset. Default shares (`AUTHORS_KEEP`): rate 0 and 1
dropped (no learning signal in a group that is all wrong or all right), 1/8 at 0.8, 2/8 at 0.9, the rest kept. A
row without statistics is dropped (as theirs); a rate with no share listed is an error. The kept rows are written
in the input's own format (parquet rows exactly as read; other formats as JSON lines) to `<out>/train.filtered.
<12 hex>.<ext>`, then converted as usual.

The reward function picks its grader by `data_source`; the training set's sources (math_dapo, ...) are not among
the names it knows, so `PreparedData.kinds` maps every data source of the converted files to its kind, for
`reward.custom_reward_function.reward_kwargs.data_sources` (`harness.verl`).

Departs from the authors: their dataset class rewrites each prompt with their own instruction text; here every
prompt, training and benchmark alike, is built by `cleaner.bench.prompt_messages`. A malformed row fails the whole
file with a message naming the file, the row and the column; no row is skipped but the ungradable ones above.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from cleaner import data
from cleaner.data.download import ByHand, Download, DownloadError, fetch
from cleaner.data.livecodebench import decode_tests, lcb_problems
from cleaner.data.math_sets import strip_instruction
from cleaner.data.rows import DataError, Problem, column, gold_text, json_value, read_rows, verl_question
from harness.schema import ConfigError

TRAIN = "train"  # the name of the training set's output
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(MESSAGE)),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([("index", pa.int64()), ("id", pa.string()), ("kind", pa.string()),
                              ("split", pa.string()), ("func_name", pa.string()), ("starter_code", pa.string()),
                              ("upstream", pa.string())])),
    ("agent_name", pa.string()),
])
# a benchmark problem's metadata that stays out of `extra_info.upstream`: the tests and names have their own
# fields, and a worked solution has no business travelling beside the prompt
BENCH_META_LEFT_OUT = ("tests", "func_name", "starter_code", "solution")
CHECK_LAYOUT = {"import_prefix", "test_code", "entry_point"}  # LeetCode check functions: not gradable here
# the authors' difficulty filter (data_filter.sh): success rate of 8 rollouts -> share of its prompts kept
AUTHORS_KEEP = {0.0: 0.0, 0.125: 0.8, 0.25: 0.9, 0.375: 1.0, 0.5: 1.0, 0.625: 1.0, 0.75: 1.0, 0.875: 1.0, 1.0: 0.0}
RATE_TOLERANCE = 1e-3  # a statistic's success rate matches a listed rate within this (the authors' epsilon)


@dataclass
class Converted:
    """One input's rows, and what was left out of them (reason -> count)."""

    rows: list[dict]
    left_out: Counter = field(default_factory=Counter)


@dataclass
class PreparedData:
    """A run's verl parquet files."""

    train: Path  # the training set
    evals: dict[str, Path]  # benchmark name -> file
    kinds: dict[str, str]  # data_source -> kind (math | choice | code), over every row of every file
    left_out: dict[str, int]  # why -> training rows left out


def _object(value: Any, where: str) -> dict:
    """A row's object column, stored as an object or as its JSON."""
    if isinstance(value, str):
        return json_value(value, where, dict, "an object")
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected an object, got a {type(value).__name__}")
    return value


def _code_tests(row: dict, source: str, path: Path, i: int) -> str | None:
    """The row's tests as JSON text, in the layout the project's code grader reads (module docstring); None for
    LeetCode check functions; a DataError for anything else it cannot read."""
    tests = decode_tests(row["reward_model"]["ground_truth"], f"row {i} reward_model.ground_truth")
    if isinstance(tests, dict) and CHECK_LAYOUT <= tests.keys():
        return None
    try:
        lcb_problems(source, path, [{**row, "reward_model": {"ground_truth": tests}}])
    except DataError as e:  # its message says row 0: the one-row list it was given
        raise DataError(f"row {i} ({source}): {str(e).removeprefix('row 0').lstrip(': ')}") from None
    return json.dumps(tests)


def _row(problem: Problem, kind: str, index: int, split: str, data_source: str, ability: str, ground_truth: str,
         chat_format: str, upstream: dict) -> dict:
    from cleaner import verl_plugin  # it announces itself on stderr: imported by a conversion, not by a download
    from cleaner.bench import prompt_messages  # torch and transformers come with it: not for --help or a download

    meta = problem.meta
    return {"data_source": data_source, "prompt": prompt_messages(problem, kind, chat_format),
            "ability": ability, "reward_model": {"style": "rule", "ground_truth": ground_truth},
            "extra_info": {"index": index, "id": problem.id, "kind": kind, "split": split,
                           "func_name": meta.get("func_name"), "starter_code": meta.get("starter_code"),
                           "upstream": json.dumps(upstream, sort_keys=True, default=str) if upstream else None},
            "agent_name": verl_plugin.AGENT_NAME}


def source_kind(data_source: str) -> str:
    """A training row's kind by its data_source: code when it contains "code" (the authors' rule), else math."""
    return "code" if "code" in data_source.lower() else "math"


def train_rows(path: Path, chat_format: str) -> Converted:
    """verl rows of an Open-AgentRL-30K-format file (module docstring), in file order."""
    out = Converted([])
    for i, row in enumerate(read_rows(path)):
        source = column(row, "data_source", i)
        if not isinstance(source, str) or not source:
            raise DataError(f"row {i}: data_source must be non-empty text, got {source!r}")
        reward_model = _object(column(row, "reward_model", i), f"row {i} reward_model")
        if "ground_truth" not in reward_model:
            raise DataError(f"row {i}: reward_model has no 'ground_truth' (keys: {', '.join(reward_model)})")
        extra = row.get("extra_info")
        upstream = {} if extra is None else _object(extra, f"row {i} extra_info")
        kind = source_kind(source)
        question, instruction = verl_question(row, i), None
        if kind == "code":
            gold = _code_tests({**row, "reward_model": reward_model, "extra_info": upstream}, source, path, i)
            if gold is None:
                out.left_out["code tests in the LeetCode check-function layout"] += 1
                continue
        else:
            gold = gold_text(reward_model["ground_truth"], i)
            question, instruction = strip_instruction(question)
        if instruction is not None:
            upstream = {**upstream, "instruction": instruction}
        problem = Problem(f"{TRAIN}/{i}", question, "" if kind == "code" else gold, str(path),
                          {k: upstream.get(k) for k in ("func_name", "starter_code")})
        out.rows.append(_row(problem, kind, i, "train", source, str(row.get("ability") or kind), gold, chat_format,
                             upstream))
    return out


def eval_rows(name: str, path: Path, chat_format: str) -> Converted:
    """verl rows of the benchmark `name` (a key of `cleaner.data.DATASETS`) read by `cleaner.data.load`."""
    kind = data.kind_of(name)
    rows = []
    for i, p in enumerate(data.load(name, path)):
        gold = json.dumps(p.meta["tests"]) if kind == "code" else p.answer
        upstream = {k: v for k, v in p.meta.items() if k not in BENCH_META_LEFT_OUT}
        rows.append(_row(p, kind, i, "test", name, kind, gold, chat_format, upstream))
    return Converted(rows)


def output_path(name: str, source: Path, out_dir: Path, chat_format: str) -> Path:
    """Where the conversion of `source` goes: named by the set, the chat format and the input's content."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return out_dir / f"{name}.{chat_format}.{digest}.parquet"


def convert(name: str, source: Path | None, chat_format: str, data_root: Path | None = None) -> tuple[Path, Converted]:
    """One input's verl rows, in memory (`name` "train", or a benchmark; `source` None: the benchmark's file found
    by `cleaner.data` under `data_root` or its defaults): (the input's path, the conversion). A DataError names the
    file; no row left is one too. The checks every file gets, shared by `prepare` and `harness.preflight`."""
    if name == TRAIN:
        if source is None:
            raise DataError("the training set needs a file")
        try:
            converted = train_rows(source, chat_format)
        except DataError as e:  # name the file, as cleaner.data.load does
            raise DataError(str(e) if str(e).startswith(str(source)) else f"{source}: {e}") from None
    else:
        source = data.resolve_path(name, source, data_root)
        converted = eval_rows(name, source, chat_format)
    if not converted.rows:
        raise DataError(f"{source}: no row left to train or evaluate on ({dict(converted.left_out)})")
    return source, converted


def prepare(name: str, source: Path | None, out_dir: Path, chat_format: str,
            data_root: Path | None = None) -> tuple[Path, Converted, bool]:
    """Convert one input (`convert`) and write it; (output path, the conversion, whether the file was written:
    False when an identical one was there already)."""
    source, converted = convert(name, source, chat_format, data_root)
    out = output_path(name, source, out_dir, chat_format)
    table = pa.Table.from_pylist(converted.rows, schema=SCHEMA)
    if out.exists() and pq.read_table(out).equals(table):
        return out, converted, False
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out, converted, True


def parse_keep(spec: str) -> dict[float, float]:
    """`--filter-keep` text, "rate:share,rate:share,..." (the authors' --success_rate_ratios), as a dict."""
    keep = {}
    for pair in spec.split(","):
        rate, sep, share = pair.partition(":")
        try:
            keep[float(rate)] = float(share)
        except ValueError:
            raise DataError(f"--filter-keep: {pair!r} is not rate:share (e.g. 0.125:0.8)") from None
        if not (sep and 0 <= float(rate) <= 1 and 0 <= float(share) <= 1):
            raise DataError(f"--filter-keep: {pair!r} is not rate:share with both in [0, 1]")
    return keep


def read_stats(path: Path) -> dict[str, float]:
    """uid -> success rate from a statistics file (module docstring)."""
    stats = {}
    for i, row in enumerate(read_rows(path)):
        uid, rate = str(column(row, "uid", i)), column(row, "success_rate", i)
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise DataError(f"{path}: row {i} (uid {uid}): success_rate {rate!r} is not a number in [0, 1]")
        stats[uid] = float(rate)
    return stats


def difficulty_filter(rows: list[dict], stats: dict[str, float], keep: dict[float, float]) -> tuple[list[int],
                                                                                                     Counter]:
    """The authors' difficulty filter (module docstring): (the kept rows' indices in file order, why -> rows left
    out)."""
    groups: dict[tuple[float, bool], list[int]] = {}
    left_out = Counter()
    for i, row in enumerate(rows):
        uid = str(row["uid"]) if "uid" in row else str(i)
        if uid not in stats:
            left_out["no difficulty statistics"] += 1
            continue
        rate = next((r for r in keep if abs(r - stats[uid]) <= RATE_TOLERANCE), None)
        if rate is None:
            raise DataError(f"row {i} (uid {uid}): success rate {stats[uid]:g} has no share in --filter-keep "
                            f"(rates: {', '.join(f'{r:g}' for r in keep)})")
        code = source_kind(str(column(row, "data_source", i))) == "code"
        groups.setdefault((rate, code), []).append(i)
    kept = []
    for (rate, code), members in groups.items():
        n = int(len(members) * keep[rate])
        if n >= len(members):
            kept += members
        elif n > 0:
            seed = (42 if code else 43) + int(rate * 1000)
            kept += np.random.RandomState(seed).choice(members, size=n, replace=False).tolist()
        if n < len(members):
            left_out[f"difficulty filter, success rate {rate:g}"] += len(members) - n
    return sorted(kept), left_out


def filter_train(source: Path, stats_path: Path, keep: dict[float, float], out_dir: Path) -> tuple[Path, int, Counter]:
    """Write the rows of `source` that the difficulty filter keeps, in its own format; (the file, rows kept, why ->
    rows left out)."""
    rows = read_rows(source)
    kept, left_out = difficulty_filter(rows, read_stats(stats_path), keep)
    digest = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in (source, stats_path))
                            + json.dumps(sorted(keep.items())).encode()).hexdigest()[:12]
    parquet = source.suffix.lower() == ".parquet"
    out = out_dir / f"{TRAIN}.filtered.{digest}.{'parquet' if parquet else 'jsonl'}"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if parquet:
        pq.write_table(pq.read_table(source).take(kept), tmp)
    else:
        tmp.write_text("".join(json.dumps(rows[i]) + "\n" for i in kept))
    tmp.replace(out)
    return out, len(kept), left_out


def prepare_config_data(data_cfg: DictConfig, out_dir: Path, chat_format: str) -> PreparedData:
    """The verl parquet of a run's `data` group; a bad file or name is a ConfigError naming its key."""
    if data_cfg.name == "lab" or not data_cfg.train_path:
        raise ConfigError("cluster=verl trains on a file: set data=open_agentrl and data.train_path")
    named = {TRAIN: ("data.train_path", data_cfg.train_path),
             **{k: (f"data.eval_paths.{k}", v) for k, v in data_cfg.eval_paths.items()}}
    files, kinds, left_out = {}, {}, {}
    for name, (key, path) in named.items():
        try:  # an empty benchmark path: its file under the data root (cleaner.data.resolve_path)
            files[name], converted, _ = prepare(name, Path(path) if path else None, out_dir, chat_format)
        except ValueError as e:  # DataError: the file; ValueError: an unknown benchmark or chat format
            raise ConfigError(f"{key}={path}: {e}") from None
        kinds.update({r["data_source"]: r["extra_info"]["kind"] for r in converted.rows})
        left_out.update(converted.left_out)
    return PreparedData(files.pop(TRAIN), files, dict(sorted(kinds.items())), left_out)


def data_folder(data_root: Path | None) -> Path:
    """Where NAMEs are downloaded: `data_root` (--data-root), else CLEANER_DATA_ROOT, else <repository>/data;
    relative to the working directory when it is inside it (so the lines printed are short)."""
    folder = data_root if data_root is not None else Path(os.environ.get(data.ENV_DATA_ROOT) or data.DOWNLOAD_ROOT)
    return folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder


def check_downloadable(names: list[str]) -> None:
    """A DataError, one line, for the first of `names` that is not a set with a pinned download."""
    downloadable = sorted(n for n, spec in data.DATASETS.items() if isinstance(spec.source, Download))
    for name in names:
        if name not in data.DATASETS:
            raise DataError(f"unknown data set {name!r}; downloadable: {', '.join(downloadable)}")
        if isinstance(data.DATASETS[name].source, ByHand):
            raise DataError(data.by_hand_message(name))


def download(name: str, folder: Path) -> str:
    """Put the pinned file of the set `name` under the data folder `folder` (`cleaner.data.download.fetch`); its
    lines of output. A DownloadError (the server; its message adds the offline way) or a DataError (a file with
    another checksum is in the way), as `fetch` raises them."""
    spec = data.DATASETS[name]
    source, target = spec.source, folder / spec.relpath
    try:
        written = fetch(source, target)
    except DownloadError as e:
        raise DownloadError(f"{e}; offline: put the file (sha256 {source.sha256}) at DIR/{spec.relpath} and set "
                            f"{data.ENV_DATA_ROOT}=DIR") from None
    if written:
        return f"downloaded {name} -> {target} ({source.size_bytes:,} bytes, sha256 checked)\n  from {source.url()}"
    return f"present {name}: {target} (sha256 as pinned; not downloaded again)"


def eval_spec(spec: str) -> tuple[str, Path | None]:
    """`--eval` text, NAME or NAME=FILE, as (name, file or None)."""
    name, sep, path = spec.partition("=")
    return name, Path(path) if sep else None


def _left(left_out: Counter) -> str:
    return "".join(f"; left out {n}: {why}" for why, n in left_out.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.prepare_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="a public benchmark to download into the data folder (" + ", ".join(
                            sorted(n for n, spec in data.DATASETS.items() if isinstance(spec.source, Download)))
                        + ")")
    parser.add_argument("--data-root", type=Path, metavar="DIR",
                        help=f"the data folder: downloads go there and --eval NAME reads from there (default: "
                             f"{data.ENV_DATA_ROOT}, else <repository>/data)")
    parser.add_argument("--out", type=Path, help="folder for the verl parquet files")
    parser.add_argument("--train", type=Path, help="the training set (Open-AgentRL-30K format)")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME[=FILE]",
                        help=f"a benchmark ({', '.join(sorted(data.DATASETS))}), with its file or found by "
                             "cleaner.data")
    parser.add_argument("--chat-format", default="hermes", help="the chat format the prompts are built for")
    parser.add_argument("--filter", type=Path, metavar="STATS",
                        help="difficulty-filter --train first by these per-prompt statistics (JSON lines with uid, "
                             "success_rate), as the authors did for 7B")
    parser.add_argument("--filter-keep", default=",".join(f"{r:g}:{s:g}" for r, s in AUTHORS_KEEP.items()),
                        metavar="RATE:SHARE,...", help="share of the prompts kept per success rate (default: the "
                                                       "authors', %(default)s)")
    args = parser.parse_args(argv)
    if args.filter and not args.train:
        parser.error("--filter filters the training set: give --train")
    jobs = ([(TRAIN, args.train)] if args.train else []) + [eval_spec(spec) for spec in args.eval]
    if not jobs and not args.names:
        parser.error("nothing to do: give NAMEs to download and/or --train / --eval to convert")
    if jobs and args.out is None:
        parser.error("--train and --eval convert into a folder: give --out DIR")
    try:
        check_downloadable(args.names)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    folder = data_folder(args.data_root)
    for name in args.names:
        try:
            print(download(name, folder), flush=True)
        except DataError as e:  # DownloadError: the server (1); DataError: a file in the way (2)
            print(f"error: {name}: {e}", file=sys.stderr, flush=True)
            return 1 if isinstance(e, DownloadError) else 2
    for name, source in jobs:
        try:
            if name == TRAIN and args.filter:
                source, kept, left_out = filter_train(source, args.filter, parse_keep(args.filter_keep), args.out)
                print(f"filtered {name}: {kept} rows -> {source}{_left(left_out)}", flush=True)
            out, converted, written = prepare(name, source, args.out, args.chat_format, args.data_root)
        except ValueError as e:  # DataError: a file; ValueError: an unknown benchmark or chat format
            print(f"error: {name}: {e}", file=sys.stderr, flush=True)
            return 2
        print(f"{'wrote' if written else 'unchanged'} {name}: {len(converted.rows)} rows -> {out}"
              f"{_left(converted.left_out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
