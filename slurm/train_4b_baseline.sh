#!/bin/bash
#SBATCH --job-name=cleaner-4b-baseline
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
# The DAPO-with-tools baseline of Table 1 ("DAPO-baseline-4B"): CLEANER-4B's recipe with SAAR off (saar=baseline),
# everything else the same. Resumable like train_4b.sh. Parameters: slurm/common.sh.
#   sbatch slurm/train_4b_baseline.sh [key=value ...]
# shellcheck source=slurm/common.sh
source "${CLEANER_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"

model=${CLEANER_MODEL:-$CLEANER_MODELS/Qwen3-4B-RA-SFT}
preflight "$model" preset=qwen3_4b saar=baseline "$@"
start_ray
run_harness preset=qwen3_4b saar=baseline "model.path=$model" "$@"
