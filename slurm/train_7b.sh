#!/bin/bash
#SBATCH --job-name=cleaner-7b
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
# CLEANER-7B as in the paper (Table 5): Qwen2.5-7B RA-SFT, lr 1e-6, SAAR applied to a trajectory with probability
# p = 0.7 (the preset sets saar.rollback_probability=0.7). The paper trained 7B on a difficulty-filtered set in
# about 2 days: `python -m harness.prepare_data --out DIR --train FILE --filter STATS` writes it with the authors'
# filter (docs/cluster.md); point CLEANER_TRAIN_FILE at the filtered file. Resumable like train_4b.sh. Parameters:
# slurm/common.sh.
#   sbatch slurm/train_7b.sh [key=value ...]       add saar=baseline for the 7B baseline
# shellcheck source=slurm/common.sh
source "${CLEANER_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"

model=${CLEANER_MODEL:-$CLEANER_MODELS/Qwen2.5-7B-RA-SFT}
preflight "$model" preset=qwen2_5_7b "$@"
start_ray
run_harness preset=qwen2_5_7b "model.path=$model" "$@"
