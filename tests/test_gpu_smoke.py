"""The GPU smoke check (`python -m harness.gpu_smoke`) end to end on the CPU with its tiny config: it exits 0,
writes the record the docs describe, and the recompute with prefix reuse equals the full recompute on every
response token. Also: a failed check gives exit status 1, the padded tokenizer decodes every id without spelling
markup, and Qwen3-4B's preset fits one H100 by the script's own memory estimate (no silent fallback there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cleaner import chat
from harness import gpu_smoke

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float32 on the CPU: prefix reuse and full forwards agree to ~1e-6 (the tiny preset's bound is 1e-4)


def run_smoke(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "harness.gpu_smoke", "--device", "cpu", "--config", "tiny", "--out", str(out),
               *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CLEANER_THREADS": "1"})


def test_tiny_smoke_runs_end_to_end_and_recompute_with_prefix_reuse_equals_full(tmp_path):
    out = tmp_path / "smoke.json"
    done = run_smoke(out)
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("device", "model", "rollout", "recompute", "update", "memory", "wall"):
        assert f"\n{row} " in "\n" + done.stdout, f"table row {row!r} missing:\n{done.stdout}"
    record = json.loads(out.read_text())
    assert record["passed"] is True and all(record["checks"].values()), record["checks"]
    assert record["config"] == "tiny" and record["device"] == "cpu" and record["device_name"]
    assert record["torch"] == torch.__version__ and record["transformers"] and record["wall_s"] > 0
    model = record["model"]
    assert model["layers"] == model["layers_requested"] == model["config"]["num_hidden_layers"] == 2
    assert model["fallback"] is None and model["parameters"] > 0 and model["dtype"] == "float32"

    rollout = record["rollout"]
    groups = record["preset"]["prompts"]
    assert rollout["trajectories"] == groups * record["preset"]["group_size"]
    assert rollout["splices_shallow"] == rollout["splices_deep"] == groups  # one of each kind per group
    assert rollout["sampled_tokens"] > 0 and rollout["scripted_tokens"] > 0 and rollout["rendered_tokens"] > 0
    assert rollout["generation_tokens_per_s"] > 0
    assert rollout["finish_reasons"] == {"answer": rollout["trajectories"]}

    recompute = record["recompute"]
    # every response token was compared, not a subset
    assert recompute["tokens_compared"] == round(rollout["response_tokens"] * rollout["trajectories"])
    assert recompute["max_abs_diff"] <= TOL
    assert recompute["speedup"] > 0 and recompute["reuse_s"] > 0 and recompute["full_s"] > 0
    gap = recompute["sampled_vs_recomputed"]
    assert gap["untouched_tokens"] > 0 and gap["untouched_max_abs_gap"] <= TOL  # sampled under the same weights
    assert gap["spliced_tokens"] > 0 and gap["spliced_mean_abs_gap"] > 1e-3  # sampled after the error: stale

    update = record["update"]
    assert abs(update["loss"]) < 1e3 and update["grad_norm"] > 0 and update["step_s"] > 0
    assert update["params_changed_fraction"] > 0.5  # float32, lr 1e-3: most elements move
    assert update["micro_batches"] == -(-rollout["trajectories"] // record["preset"]["micro_batch"])
    assert record["peak_memory_gib"] is None and record["host_max_rss_gib"] > 0  # no device memory on the CPU


def test_a_failed_check_gives_exit_status_1(tmp_path):
    out = tmp_path / "smoke.json"
    done = run_smoke(out, "--prompts", "1", "--group-size", "2", "--reasoning-tokens", "4", "--repeats", "1",
                     "--tolerance=-1")
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(out.read_text())
    assert record["checks"]["recompute_equal"] is False and record["passed"] is False
    assert "FAILED" in done.stdout


def test_padded_tokenizer_decodes_every_id_and_no_filler_spells_markup():
    tok = gpu_smoke._tokenizer(4096)
    lab = gpu_smoke.lab_tokenizer()
    assert len(tok) == 4096
    text = "Let me compute.\n<tool_call>\n{\"a\": 12}\n</tool_call><|im_end|>"
    assert tok.encode(text, add_special_tokens=False) == lab.encode(text, add_special_tokens=False)
    fillers = [tok.convert_ids_to_tokens(i) for i in range(len(lab), len(tok))]
    assert len(set(fillers)) == len(fillers)
    table = chat.token_bytes(tok)
    assert len(table) == 4096
    assert all(len(table[i]) == 3 and min(table[i]) >= 0xA1 for i in range(len(lab), len(tok)))  # never ASCII


def test_qwen3_4b_preset_fits_one_h100_by_its_own_estimate_and_falls_back_to_fewer_layers_on_less():
    preset = gpu_smoke.PRESETS["qwen3_4b"]
    seq_tokens = preset.prompt_tokens + gpu_smoke._rollout_config(preset).max_response_tokens

    def fit(free_gib):
        return gpu_smoke._fit_layers(preset, 36, torch.bfloat16, seq_tokens, int(free_gib * 2**30))

    layers, why, estimate = fit(78)  # an H100 shows about 79 GiB free
    assert (layers, why) == (36, None) and estimate < 78 * 2**30
    assert gpu_smoke._fit_layers(preset, 36, torch.bfloat16, seq_tokens, None)[:2] == (36, None)  # the CPU
    smaller = gpu_smoke._memory_estimate(preset, 24, torch.bfloat16, seq_tokens)
    layers, why, estimate = fit(smaller / 2**30)
    assert layers == 24 and estimate == smaller and why.startswith("36 layers need about") and "24 layers used" in why
    with pytest.raises(SystemExit, match="lower --group-size"):
        fit(8)  # the weights alone are 7.5 GiB
