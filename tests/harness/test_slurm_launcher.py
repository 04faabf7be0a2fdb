"""launcher=slurm, without a cluster: a fake `sbatch` on PATH captures the job array submitit writes for a sweep,
and the sbatch parameters are asserted. What stays unverified: that a real SLURM accepts the script and that the
jobs run there (no cluster here)."""

from __future__ import annotations

import os
import subprocess
import sys

from harness.records import REPO


def test_a_slurm_sweep_submits_one_array_with_the_launcher_parameters(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "job.sh"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {captured}\necho "sbatch: refused by the test" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", "-m", "launcher=slurm", "saar.gamma=0.3,0.5,0.7",
                           "hydra.launcher.partition=cpu", "hydra.launcher.array_parallelism=2",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"runs_root={tmp_path / 'runs'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "refused by the test" in proc.stderr  # the fake sbatch refused the job
    script = captured.read_text()
    sbatch = sorted(line for line in script.splitlines() if line.startswith("#SBATCH"))
    # the lab's job size (the cluster group's): 2 CPUs, 8 GB, 3 hours, no GPU; a paper preset's is tested in
    # tests/harness/test_configs.py (a node of 4 GPUs, 32 CPUs, 480 GB, 4 days)
    for expected in ("#SBATCH --array=0-2%2", "#SBATCH --partition=cpu", "#SBATCH --time=180", "#SBATCH --nodes=1",
                     "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=8GB"):
        assert expected in sbatch, f"{expected} not in {sbatch}"
    assert not any("gpus" in line for line in sbatch), sbatch
    assert "submitit.core._submit" in script  # each array task runs one pickled harness run
    assert not (tmp_path / "runs").exists(), "nothing runs on the submitting machine"
