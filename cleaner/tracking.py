"""Experiment tracking for the lab trainer: one small logger over a registry of backends, as verl's
`trainer.logger` is (`console`, `tensorboard`, `wandb`, ...).

    tracker = Tracker(run_dir, ("tensorboard", "wandb"), name="81f020a8c905", config={...})
    tracker.log(step, {"accuracy": 0.9, "saar": {"splices_shallow": 3}})   # scalars; nested keys joined by "/"
    tracker.close()

Backends: `tensorboard` writes event files to `<run_dir>/tensorboard/` (view: `tensorboard --logdir results/runs`);
`wandb` runs W&B in offline mode into `<run_dir>/wandb/` (upload later with `wandb sync`), so a run never needs the
network. A resumed run appends to the same files, its steps continuing. `metrics.jsonl` in the run folder stays
the record; trackers are views of it and are not part of a run's identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cleaner.registry import Registry

BACKENDS = Registry("tracking backend")


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of `metrics` (booleans excluded), nested keys joined by "/"."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


@BACKENDS.register("tensorboard")
def _tensorboard(folder: Path, name: str, config: Mapping[str, Any]) -> tuple[Callable, Callable]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log(step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    return log, writer.close


@BACKENDS.register("wandb")
def _wandb(folder: Path, name: str, config: Mapping[str, Any]) -> tuple[Callable, Callable]:
    import wandb

    run = wandb.init(mode="offline", dir=str(folder), project="cleaner", name=name, id=name, resume="allow",
                     config=dict(config))
    return (lambda step, values: run.log(values, step=step)), run.finish


class Tracker:
    """The backends named (keys of `BACKENDS`; an unknown one is an error listing the valid ones), each opened
    on `folder`."""

    def __init__(self, folder: Path, backends: Iterable[str], name: str, config: Mapping[str, Any]):
        self._open = [BACKENDS[b](Path(folder), name, config) for b in backends]

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = scalars(metrics)
        for log, _ in self._open:
            log(step, values)

    def close(self) -> None:
        for _, close in self._open:
            close()
