"""Offline purification: records per CPU-second and peak memory.

Throughput: a generated 10,000-record fenced-code log (the bundled `fenced_code.jsonl` repeated under new ids:
markdown calls, outputs in user turns, a one-shot demonstration, one record in nine rejected), read, purified and
written as `python -m cleaner.purify ... --format markdown --error-pattern '^Error:'` does, the tokenizer loaded
beforehand (the work, not the start-up). Against the purifier before streaming (`REFERENCE`, the module at that
commit, loaded from git into a temporary module) in the same run: its default path (every text encoded with the
lab tokenizer) against today's default (text-level, no tokenizer), and both with the lab tokenizer. CPU time is
`time.process_time` (every thread of the process, so the tokenizers library's batch threads count); the printed
rates and the ratio are kept in the benchmark's `extra_info`. The reference is skipped where git or that commit
is not there (a shallow clone).

Memory: the CLI in a child process on 2,000 and on 20,000 records; its peak resident set (`VmHWM` of
/proc/self/status, Linux; `ru_maxrss` would carry the parent's peak over the exec) must not grow with the file.

SmolLM2's tokenizer: the time to build it from the GGUF file (`cleaner.smollm2`), reported, not asserted (the
transformers conversion it replaces took about 67 s on two cores). Run with `make bench`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cleaner import purify, saar
from cleaner.lab.tokenizer import lab_tokenizer

RECORDS = 10_000
FENCED = Path(purify.__file__).parents[1] / "examples" / "fenced_code.jsonl"
REFERENCE = "f23a7c54439d8425243c6b776d0685513f9da10b"  # the last commit of the purifier that read whole files
ROOT = Path(purify.__file__).parents[2]


def fenced_log(path: Path, records: int) -> Path:
    base = [json.loads(line) for line in FENCED.read_text().splitlines()]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(records):
            record = base[i % len(base)]
            f.write(json.dumps({**record, "id": f"{record['id']}-{i}"}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def log_10k(tmp_path_factory) -> Path:
    return fenced_log(tmp_path_factory.mktemp("bench") / "fenced_10k.jsonl", RECORDS)


@pytest.fixture(scope="module")
def reference() -> types.ModuleType:
    """`cleaner.purify` as it was at `REFERENCE`, importable beside today's."""
    proc = subprocess.run(["git", "show", f"{REFERENCE}:cleaner/purify/__init__.py"], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"the reference purifier is not in this clone ({proc.stderr.strip()})")
    module = types.ModuleType("purify_reference")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(proc.stdout, f"{REFERENCE[:7]}:cleaner/purify/__init__.py", "exec"), module.__dict__)
    return module


def cpu_seconds(work) -> tuple[float, object]:
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def test_records_per_cpu_second_against_the_reference(benchmark, log_10k, reference):
    tok = lab_tokenizer()  # outside the measured work
    dst = log_10k.with_name("out.jsonl")
    runs = {
        "reference, default (lab tokenizer)": lambda: reference.run(
            log_10k, dst, saar.SaarConfig(), tok, "lab", fmt="markdown", error_pattern="^Error:"),
        "today, default (text-level)": lambda: purify.run(
            log_10k, dst, saar.SaarConfig(), fmt="markdown", error_pattern="^Error:"),
        "reference, --tokenizer lab": lambda: reference.run(
            log_10k, dst, saar.SaarConfig(), tok, "lab", fmt="markdown", error_pattern="^Error:", write_tokens=True),
        "today, --tokenizer lab": lambda: purify.run(
            log_10k, dst, saar.SaarConfig(), tok, "lab", fmt="markdown", error_pattern="^Error:", write_tokens=True),
    }
    rates = {}
    for name, work in runs.items():
        best = min(cpu_seconds(work)[0] for _ in range(2))
        rates[name] = RECORDS / best
        print(f"\n{name}: {rates[name]:.0f} records per CPU-second (best of 2)")
    report = benchmark.pedantic(runs["today, default (text-level)"], rounds=2, iterations=1)
    assert (report.trajectories, report.rejected) == (8889, 1111)  # "bare-fence", 8th of 9: records 7, 16, ..., 9997
    default_ratio = rates["today, default (text-level)"] / rates["reference, default (lab tokenizer)"]
    tokenized_ratio = rates["today, --tokenizer lab"] / rates["reference, --tokenizer lab"]
    print(f"default path: {default_ratio:.2f}x the reference; with the lab tokenizer: {tokenized_ratio:.2f}x")
    benchmark.extra_info.update({k: round(v, 1) for k, v in rates.items()})
    benchmark.extra_info.update(default_ratio=round(default_ratio, 2), tokenized_ratio=round(tokenized_ratio, 2))
    assert default_ratio >= 5  # the target; measured 5.65-6.04x on two shared cores (docs/purify.md)
    assert tokenized_ratio >= 0.8  # streaming costs nothing measurable


PEAK = ("import re, sys; from cleaner.purify.__main__ import main; sys.stdout = open('/dev/null', 'w'); "
        "main(sys.argv[1:]); sys.stderr.write(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])")


def peak_rss_mb(src: Path, dst: Path, *options: str) -> float:
    """Peak resident memory of `python -m cleaner.purify SRC DST OPTIONS`, in MB."""
    proc = subprocess.run([sys.executable, "-c", PEAK, str(src), str(dst), *options], capture_output=True, text=True,
                          check=True)
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_does_not_grow_with_the_file(benchmark, tmp_path):
    options = ("--format", "markdown", "--error-pattern", "^Error:")
    small = peak_rss_mb(fenced_log(tmp_path / "small.jsonl", 2_000), tmp_path / "small.out.jsonl", *options)
    large_log = fenced_log(tmp_path / "large.jsonl", 20_000)
    large = benchmark.pedantic(peak_rss_mb, (large_log, tmp_path / "large.out.jsonl", *options), rounds=1)
    print(f"\npeak resident memory: {small:.0f} MB for 2,000 records, {large:.0f} MB for 20,000")
    benchmark.extra_info.update(peak_mb_2k=round(small, 1), peak_mb_20k=round(large, 1))
    assert large - small < 10, (small, large)  # the whole-file purifier grew ~130 KB per record: +2.3 GB here
    # every record rejected (the log read in the wrong format): rejections stream too (they piled up: +99 MB here)
    small_rejected = peak_rss_mb(tmp_path / "small.jsonl", tmp_path / "small.rejected-all.jsonl")
    large_rejected = peak_rss_mb(large_log, tmp_path / "large.rejected-all.jsonl")
    benchmark.extra_info.update(peak_mb_2k_all_rejected=round(small_rejected, 1),
                                peak_mb_20k_all_rejected=round(large_rejected, 1))
    print(f"every record rejected: {small_rejected:.0f} MB for 2,000 records, {large_rejected:.0f} MB for 20,000")
    assert large_rejected - small_rejected < 10, (small_rejected, large_rejected)


def test_smollm2_tokenizer_load_seconds(benchmark):
    """Wall and CPU seconds to build SmolLM2's tokenizer from the bundled GGUF file, in a fresh process (nothing
    cached, transformers imported as a purifier run imports it); printed and kept in `extra_info`, not asserted."""
    code = ("import time; w, c = time.perf_counter(), time.process_time(); from cleaner import smollm2, models; "
            "tok = smollm2.gguf_tokenizer(models.smollm2_gguf()); "
            "print(time.perf_counter() - w, time.process_time() - c, len(tok))")

    def load() -> tuple[float, float]:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        wall, cpu, size = proc.stdout.split()
        assert int(size) == 49152
        return float(wall), float(cpu)

    wall, cpu = benchmark.pedantic(load, rounds=1)
    print(f"\nSmolLM2 tokenizer from its GGUF file: {wall:.1f} s wall, {cpu:.1f} s CPU")
    benchmark.extra_info.update(smollm2_load_wall_s=round(wall, 2), smollm2_load_cpu_s=round(cpu, 2))
