"""Held-out evaluation of a finished run, SAAR off and on at test time (the paper's Table 4 for the lab):

    python -m harness.eval [the run's own overrides]

The overrides name the run exactly as for `python -m harness.train`; its final checkpoint is evaluated twice on the
same held-out problems with the same seeds, SAAR off then on (with the run's gamma, K and p). The result goes to
`<run folder>/eval.json` (skipped when present): both metric sets, the accuracy difference, and the latency
overhead of SAAR (the paper reports +8.8% for Qwen3-4B).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import transformers
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

from cleaner.rl.trainer import evaluate
from cleaner.sandbox import SandboxPool
from cleaner.trajectory import write_lines_atomic
from harness import cli, records, schema


async def saar_off_and_on(checkpoint: Path, train_cfg: Any) -> dict[str, Any]:
    """Both evaluations, after a short warm-up, so neither pays for first-call costs in its wall time."""
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True).eval()
    async with SandboxPool(train_cfg.sandbox) as pool:
        await evaluate(model, tokenizer, dataclasses.replace(train_cfg, eval_problems=2), pool, saar_enabled=True)
        off = await evaluate(model, tokenizer, train_cfg, pool, saar_enabled=False)
        on = await evaluate(model, tokenizer, train_cfg, pool, saar_enabled=True)
    return {"saar_off": off, "saar_on": on, "accuracy_delta": on["accuracy"] - off["accuracy"],
            "latency_overhead": on["wall_s"] / off["wall_s"] - 1.0}


def run(cfg: DictConfig) -> dict[str, Any]:
    train_cfg = schema.lab_train_config(cfg)
    run_dir = Path(cfg.runs_root) / records.config_hash(cfg)
    if not (run_dir / "summary.json").exists():
        raise schema.ConfigError(f"run {run_dir} has not finished; train it first with python -m harness.train "
                                 "and the same overrides")
    out = run_dir / "eval.json"
    if out.exists():
        result = json.loads(out.read_text())
    else:
        result = asyncio.run(saar_off_and_on(run_dir / "checkpoint", train_cfg))
        write_lines_atomic(out, iter([json.dumps(result, indent=1)]))
    table = Table(title=f"run {run_dir.name}: held-out, SAAR at test time", title_justify="left")
    for col in ("SAAR at test time", "pass@1", "tool failures / traj", "rollbacks / traj", "wall s"):
        table.add_column(col)
    for name in ("saar_off", "saar_on"):
        m = result[name]
        table.add_row(name.replace("saar_", ""), f"{m['accuracy']:.3f} +- {m['accuracy_stderr']:.3f}",
                      f"{m['final_failures_per_traj']:.3f}", f"{m['rollbacks_triggered_per_traj']:.3f}",
                      f"{m['wall_s']:.1f}")
    Console().print(table)
    Console().print(f"accuracy difference {result['accuracy_delta']:+.3f}, "
                    f"latency overhead {100 * result['latency_overhead']:+.1f}%")
    return result


schema.register()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    return cli.guarded(run, cfg)


if __name__ == "__main__":
    cli.check_overrides(sys.argv[1:])
    main()
