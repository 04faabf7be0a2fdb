"""A sweep of runs, each launched through submitit and recorded in `results/runs/<config hash>/`:

    python -m harness.sweep -m saar.gamma=0.3,0.5,0.7 [launcher=slurm hydra.launcher.partition=...]
    python -m harness.sweep -m +sweeps=gamma          (one question per file in sweeps/)

Hydra's basic sweeper expands the grid; `launcher=local` (the default) runs each point in its own process, and
`launcher=slurm` submits a job array. Killed and rerun, a sweep skips finished runs and resumes the others.
"""

from __future__ import annotations

from harness import cli
from harness.train import check, run

if __name__ == "__main__":
    cli.main(run, "sweep", config="sweep", check=check)
