#!/bin/bash
#SBATCH --job-name=cleaner-4b-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
# Table 4 for a finished 4B run: its last checkpoint evaluated on CLEANER_EVAL_SETS (16 samples per problem,
# temperature 1.0, top_p 0.6, prompts up to 4096 tokens) twice, SAAR on and then off at test time, each with its
# wall time; results in <run>/eval_saar_on/ and <run>/eval_saar_off/ (summary.json, metrics.jsonl). Give the
# run's own overrides so that it names the same run; an evaluation already done is skipped.
#   sbatch slurm/eval_4b.sh [key=value ...]      e.g. saar=baseline for the DAPO baseline's run
# shellcheck source=slurm/common.sh
source "${CLEANER_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"

model=${CLEANER_MODEL:-$CLEANER_MODELS/Qwen3-4B-RA-SFT}
preflight "$model" preset=qwen3_4b "$@"
start_ray
run_harness preset=qwen3_4b "model.path=$model" test_time_saar=true "$@"
run_harness preset=qwen3_4b "model.path=$model" test_time_saar=false "$@"
