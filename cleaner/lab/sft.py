"""Cold-start SFT of the lab model, cached by the hash of its config.

    python -m cleaner.lab.sft [--task-set lab|regime] [--out results/lab/sft] [--steps N]

Trains the tiny Qwen3 on `cleaner.lab.sft_data` trajectories (loss on assistant tokens only, the mask of
`cleaner.trajectory`), and saves model, tokenizer, config and the loss curve in `<out>/<config hash>/`. A folder
that holds `done.json` is reused as it is. The loss on answer digits is logged apart: the model learns the format
early and copying numbers late, in a sharp transition, so total loss alone says little.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import transformers

from cleaner import chat
from cleaner.lab import tasks
from cleaner.lab.model import tiny_qwen3
from cleaner.lab.config import SFT_RECIPES, SftConfig
from cleaner.lab.sft_data import build_records, build_regime_records, regime_record_stats
from cleaner.lab.tokenizer import lab_tokenizer
from cleaner.purify import trajectory_from_messages
from cleaner.trajectory import write_lines_atomic


def idle_threads() -> int:
    """Threads for torch: $CLEANER_THREADS if set, else the cores not already busy (on 2 cores, 2 threads next to
    another job are 5-10x slower than 1). Set it where results must not depend on the machine's load: the thread
    count changes the order of float sums."""
    if os.environ.get("CLEANER_THREADS"):
        return int(os.environ["CLEANER_THREADS"])
    cores = os.cpu_count() or 1
    return max(1, cores - round(os.getloadavg()[0]))


def lr_at(step: int, cfg: SftConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def length_buckets(lengths: list[int], batch_size: int, rng: random.Random, window: int = 64) -> list[list[int]]:
    """One epoch of batches, shuffled, each drawn from a window of `window` batches sorted by length, so a batch
    pads to similar lengths (less compute wasted on padding). Every example appears once per epoch, except a last
    partial batch, which is dropped."""
    order = rng.sample(range(len(lengths)), len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * window):
        chunk = sorted(order[start : start + batch_size * window], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def sft_records(cfg: SftConfig) -> list[dict]:
    """The SFT set's chat records: `cfg.num_examples` training problems of its task set, run in the sandbox."""
    problems = tasks.task_set(cfg.task_set).problems("train", cfg.num_examples, seed=cfg.seed)
    if cfg.task_set == "lab":
        return asyncio.run(build_records(problems, cfg.bug_rate, cfg.seed, cfg.max_tool_response_chars))
    return asyncio.run(build_regime_records(problems, cfg.seed, cfg.bug_rate, cfg.second_failure_rate,
                                            cfg.give_up_rate, cfg.near_miss_rate, cfg.max_tool_response_chars))


def _examples(cfg: SftConfig, tokenizer, records: list[dict]) -> list[tuple[list[int], list[int], list[int]]]:
    """(ids, loss mask, digit mask) per SFT trajectory."""
    fmt = chat.get_format("hermes")
    digits = {i for i in range(len(tokenizer)) if chat.token_bytes(tokenizer)[i].isdigit()}
    out = []
    for r in records:
        traj = trajectory_from_messages(r, tokenizer, fmt)
        ids, mask = traj.ids, traj.loss_mask
        out.append((ids, mask, [int(m and i in digits) for i, m in zip(ids, mask)]))
    return out


def train(cfg: SftConfig, out_root: Path, log=print, threads: int | None = None) -> Path:
    out = out_root / cfg.hash()
    if (out / "done.json").exists():
        log(f"SFT checkpoint {out} exists; reusing it")
        return out
    start = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = lab_tokenizer()
    log(f"SFT {cfg.hash()}: building {cfg.num_examples} {cfg.task_set} trajectories (bug rate {cfg.bug_rate}) in the "
        f"sandbox")
    records = sft_records(cfg)
    examples = _examples(cfg, tokenizer, records)
    torch.set_num_threads(threads or idle_threads())
    model = tiny_qwen3(tokenizer, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
                       seed=cfg.seed).train()
    log(f"SFT {cfg.hash()}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{cfg.steps} steps of {cfg.batch_size}, {torch.get_num_threads()} threads")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(cfg.seed)
    batches: list[list[int]] = []
    curve = []
    for step in range(cfg.steps):
        if not batches:
            batches = length_buckets([len(e[0]) for e in examples], cfg.batch_size, rng)
        batch = [examples[i] for i in batches.pop()]
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.tensor([b[0] + [tokenizer.pad_token_id] * (width - len(b[0])) for b in batch])
        mask = torch.tensor([b[1] + [0] * (width - len(b[1])) for b in batch], dtype=torch.float)
        digit = torch.tensor([b[2] + [0] * (width - len(b[2])) for b in batch], dtype=torch.float)
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [B, T-1]
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        digit_loss = float((nll.detach() * digit[:, 1:]).sum() / digit[:, 1:].sum().clamp(min=1))
        curve.append({"step": step + 1, "loss": loss.item(), "digit_loss": digit_loss, "lr": lr_at(step, cfg),
                      "wall_s": time.perf_counter() - start})
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            log(f"SFT step {step + 1}/{cfg.steps}  loss {loss.item():.3f}  digit loss {digit_loss:.3f}  "
                f"{time.perf_counter() - start:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_lines_atomic(out / "metrics.jsonl", (json.dumps(row) for row in curve))
    summary = {"config": dataclasses.asdict(cfg), "hash": cfg.hash(), "final_loss": curve[-1]["loss"],
               "final_digit_loss": curve[-1]["digit_loss"], "wall_s": time.perf_counter() - start,
               "examples": len(examples), "threads": torch.get_num_threads()}
    if cfg.task_set != "lab":  # what the data teaches, by construction (the lab set's record predates this key)
        summary["data"] = regime_record_stats(records)
    write_lines_atomic(out / "done.json", iter([json.dumps(summary, indent=1)]))
    log(f"SFT done in {summary['wall_s']:.0f} s -> {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cleaner.lab.sft", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/lab/sft"))
    p.add_argument("--task-set", default="lab", choices=sorted(SFT_RECIPES),
                   help="whose SFT recipe (cleaner.lab.config.SFT_RECIPES) to train; default: lab")
    p.add_argument("--steps", type=int, help="default: the recipe's")
    p.add_argument("--num-examples", type=int, help="default: the recipe's")
    p.add_argument("--lr", type=float, help="default: the recipe's")
    p.add_argument("--threads", type=int, help="torch threads (default: the idle cores)")
    args = p.parse_args(argv)
    changes = {k: v for k, v in (("steps", args.steps), ("num_examples", args.num_examples), ("lr", args.lr))
               if v is not None}
    train(dataclasses.replace(SFT_RECIPES[args.task_set], **changes), args.out, threads=args.threads)


if __name__ == "__main__":
    main()
