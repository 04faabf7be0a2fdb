#!/bin/bash
#SBATCH --job-name=cleaner-4b
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
# CLEANER-4B as in the paper (Table 5): Qwen3-4B RA-SFT, 250 steps of 128 prompts x 16 rollouts, lr 2e-6, SAAR
# with p = 1.0, verl + SGLang on one node of 4 GPUs (the paper: about 4 days on 4 H100 or H200).
#   sbatch slurm/train_4b.sh [key=value ...]     extra harness overrides, e.g. seed=1 saar.gamma=0.3
#   sbatch --nodes=2 --gpus-per-node=8 slurm/train_4b.sh
# Resumable: submitting the same command again (same CLEANER_* settings and overrides) continues the run from its
# last checkpoint; a finished run is skipped. Parameters: slurm/common.sh.
# shellcheck source=slurm/common.sh
source "${CLEANER_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"

model=${CLEANER_MODEL:-$CLEANER_MODELS/Qwen3-4B-RA-SFT}
preflight "$model" preset=qwen3_4b "$@"
start_ray
run_harness preset=qwen3_4b "model.path=$model" "$@"
