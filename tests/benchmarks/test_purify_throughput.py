"""Offline purification throughput: records per second on a generated 10,000-record fenced-code log (the bundled
`fenced_code.jsonl` repeated under new ids: markdown calls, outputs in user turns, a one-shot demonstration, one
record in nine rejected), read, purified and written as `python -m cleaner.purify ... --format markdown
--error-pattern '^Error:' --tokenizer NAME` does, the tokenizer loaded beforehand (the work, not the start-up).

Against the reference approach, in the same run: the same pipeline with one `tokenizer.encode` call per text, as
the purifier encoded before it batched all texts of the file into one call. Run with `make bench`; the records per
second are printed and kept in the benchmark's `extra_info`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleaner import purify, saar
from cleaner.lab.tokenizer import lab_tokenizer
from cleaner.models import load_tokenizer

RECORDS = 10_000
FENCED = Path(purify.__file__).parents[1] / "examples" / "fenced_code.jsonl"


@pytest.fixture(scope="module")
def log_10k(tmp_path_factory) -> Path:
    base = [json.loads(line) for line in FENCED.read_text().splitlines()]
    path = tmp_path_factory.mktemp("bench") / "fenced_10k.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(RECORDS):
            record = base[i % len(base)]
            f.write(json.dumps({**record, "id": f"{record['id']}-{i}"}, ensure_ascii=False) + "\n")
    return path


def one_encode_per_text(tokenizer, texts):
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


@pytest.mark.parametrize("tokenizer", ["lab", "smollm2"])
@pytest.mark.parametrize("encoding", ["batched", "one_call_per_text"])
def test_records_per_second(benchmark, monkeypatch, log_10k, tokenizer, encoding):
    tok = lab_tokenizer() if tokenizer == "lab" else load_tokenizer(tokenizer)  # outside the measured work
    if encoding == "one_call_per_text":
        monkeypatch.setattr(purify, "encode_texts", one_encode_per_text)
    dst = log_10k.with_name(f"out_{tokenizer}_{encoding}.jsonl")

    def work() -> purify.Report:
        return purify.run(log_10k, dst, saar.SaarConfig(), fmt="markdown", tokenizer=tok,
                          tokenizer_name=tokenizer, error_pattern="^Error:")

    report = benchmark.pedantic(work, rounds=2, iterations=1)
    assert (report.trajectories, report.rejected) == (8889, 1111)  # "bare-fence", 8th of 9: records 7, 16, ..., 9997
    rate = RECORDS / benchmark.stats.stats.median
    benchmark.extra_info["records_per_s"] = round(rate, 1)
    print(f"\n{tokenizer} tokenizer, {encoding}: {rate:.0f} records/s (median of 2 rounds)")
