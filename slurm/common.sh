# shellcheck shell=bash
# What the sbatch scripts in this folder share; they source it (it is not run on its own). It reads the parameters,
# exports what Ray's workers need, finds the job's nodes, runs the preflight (python -m harness.preflight), brings
# Ray up over the nodes and calls the harness, which composes the verl command from the run config (no verl
# override is written here). See docs/cluster.md.
#
# Parameters: environment variables, each with a default. The layout comes from SLURM: `sbatch --nodes=2
# --gpus-per-node=8 slurm/train_4b.sh` gives cluster.nodes=2, cluster.gpus_per_node=8.
#   CLEANER_REPO        the checkout on the shared filesystem (default: where sbatch was called, SLURM_SUBMIT_DIR)
#   CLEANER_CONTAINER   run every python and ray command in this image (default: unset, none): a .sif file through
#                       Apptainer (apptainer exec --nv), anything else (a squashfs file from enroot import, a docker://
#                       URI) through Pyxis (srun --container-image); built from docker/ (docs/cluster.md, Container)
#   CLEANER_CONTAINER_MOUNTS  more folders to mount in the container, comma-separated SRC:DST (default: none; the
#                       checkout, runs, models, data root and training file's folder are mounted at their own paths)
#   CLEANER_PYTHON      the interpreter with cleaner, verl[sglang]==0.9.1 (default: $CLEANER_REPO/.venv/bin/python;
#                       with CLEANER_CONTAINER, the image's python3, and ray on its PATH)
#   CLEANER_RUNS        runs_root: one folder per run, <runs>/<config hash>/ (default: $CLEANER_REPO/results/runs)
#   CLEANER_DATA_ROOT   benchmark files in cleaner.data's layout (default: unset, and cleaner.data reads its default
#                       folders: $CLEANER_REPO/data, where `python -m harness.prepare_data NAME` downloads, then
#                       ../shared/data beside the checkout when that holds the file)
#   CLEANER_TRAIN_FILE  the RL set (default: Open-AgentRL-30K/Open-AgentRL-30K.parquet under CLEANER_DATA_ROOT, else
#                       under $CLEANER_REPO/data)
#   CLEANER_EVAL_SETS   benchmarks, NAME or NAME=FILE, space-separated; part of the run's identity, so the same for
#                       a run's training and its evaluation (default: aime24 aime25 gpqa_diamond livecodebench_v6)
#   CLEANER_MODELS      folder holding the RA-SFT checkpoints Qwen3-4B-RA-SFT/, Qwen2.5-7B-RA-SFT/
#                       (default: $CLEANER_REPO/models); CLEANER_MODEL names one checkpoint folder directly
#   CLEANER_GPUS_PER_NODE  GPUs per node (default: SLURM_GPUS_ON_NODE, else 4)
#   CLEANER_RAY_PORT    the Ray head's port (default: 6379)
#   CLEANER_HEAD_ADDRESS  the Ray head's address (default: the first of `hostname --ip-address` on the first node)
#   CLEANER_DRY_RUN=1   print the Ray commands and the verl command instead of running them (for tests and checks)

set -euo pipefail

: "${SLURM_JOB_NODELIST:?run this under SLURM (sbatch slurm/<script>.sh); SLURM_JOB_NODELIST is unset}"
CLEANER_REPO=${CLEANER_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ -n ${CLEANER_CONTAINER:-} && -z ${CLEANER_PYTHON:-} ]]; then
    CLEANER_PYTHON=python3  # the image's (docker/Dockerfile), with ray on its PATH
    CLEANER_RAY=${CLEANER_RAY:-ray}
fi
CLEANER_PYTHON=${CLEANER_PYTHON:-$CLEANER_REPO/.venv/bin/python}
CLEANER_RAY=${CLEANER_RAY:-$(dirname "$CLEANER_PYTHON")/ray}
CLEANER_RUNS=${CLEANER_RUNS:-$CLEANER_REPO/results/runs}
train_root=${CLEANER_DATA_ROOT:-$CLEANER_REPO/data}  # the default training file's folder
CLEANER_TRAIN_FILE=${CLEANER_TRAIN_FILE:-$train_root/Open-AgentRL-30K/Open-AgentRL-30K.parquet}
CLEANER_EVAL_SETS=${CLEANER_EVAL_SETS:-aime24 aime25 gpqa_diamond livecodebench_v6}
CLEANER_MODELS=${CLEANER_MODELS:-$CLEANER_REPO/models}
CLEANER_RAY_PORT=${CLEANER_RAY_PORT:-6379}
CLEANER_DRY_RUN=${CLEANER_DRY_RUN:-0}
NNODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${CLEANER_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
CPUS_PER_NODE=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-32}}

# Ray's workers start from `ray start`'s environment: what the plugin and verl need is exported before it.
export PYTHONPATH="$CLEANER_REPO${PYTHONPATH:+:$PYTHONPATH}"  # cleaner (the agent loop, reward) and harness
export CLEANER_DATA_ROOT                                      # cleaner.data's data root (stays unset if unset)
export PYTHONUNBUFFERED=1                                     # logs as they happen
export HYDRA_FULL_ERROR=1                                     # verl's own Hydra errors in full
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}                    # every model path is local; nodes are often offline

# cleaner_do_print CMD...: CMD as one shell-quoted line
cleaner_do_print() {
    local line
    line=$(printf '%q ' "$@")
    echo "${line% }"
}

# cleaner_do CMD...: run CMD, or with CLEANER_DRY_RUN=1 print it instead
cleaner_do() {
    if [[ $CLEANER_DRY_RUN == 1 ]]; then
        cleaner_do_print "$@"
    else
        "$@"
    fi
}

# cleaner_bg CMD...: CMD in the background, or printed (in order) with CLEANER_DRY_RUN=1
cleaner_bg() {
    if [[ $CLEANER_DRY_RUN == 1 ]]; then
        cleaner_do "$@"
    else
        "$@" &
    fi
}

# The job's nodes, one name per line from scontrol; the Ray head runs on the first, at HEAD_ADDRESS
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if (( ${#NODES[@]} != NNODES )); then
    echo "error: SLURM_NNODES=$NNODES but SLURM_JOB_NODELIST names ${#NODES[@]} nodes" >&2
    exit 1
fi
if [[ -n ${CLEANER_HEAD_ADDRESS:-} ]]; then
    HEAD_ADDRESS=$CLEANER_HEAD_ADDRESS
elif [[ $CLEANER_DRY_RUN == 1 ]]; then
    HEAD_ADDRESS=${NODES[0]}  # a dry run does not resolve the head's address
else
    HEAD_ADDRESS=$(srun --nodes=1 --ntasks=1 -w "${NODES[0]}" hostname --ip-address | awk '{print $1}')
fi

# The container, when CLEANER_CONTAINER names one: the job's folders that exist are mounted at their own paths (the
# runs root is made first, so that what the harness writes lands outside the image), then CLEANER_CONTAINER_MOUNTS.
if [[ -n ${CLEANER_CONTAINER:-} ]]; then
    export PYTHONNOUSERSITE=1  # the image's packages, not those in ~/.local of a mounted home folder
    mkdir -p "$CLEANER_RUNS"
    mounts=("$CLEANER_REPO:$CLEANER_REPO")
    for path in "$CLEANER_RUNS" "$CLEANER_MODELS" "${CLEANER_MODEL:-}" "${CLEANER_DATA_ROOT:-}" \
                "$(dirname "$CLEANER_TRAIN_FILE")"; do
        [[ -d $path ]] || continue
        for mount in "${mounts[@]}"; do  # a folder inside one already mounted comes with it
            [[ $path/ == "${mount%%:*}"/* ]] && continue 2
        done
        mounts+=("$path:$path")
    done
    CONTAINER_MOUNTS=$(IFS=,; echo "${mounts[*]}${CLEANER_CONTAINER_MOUNTS:+,$CLEANER_CONTAINER_MOUNTS}")
    if [[ $CLEANER_DRY_RUN == 1 ]]; then
        :  # a dry run does not look for the container engine
    elif [[ $CLEANER_CONTAINER == *.sif ]] && ! command -v apptainer > /dev/null; then
        echo "error: CLEANER_CONTAINER=$CLEANER_CONTAINER is a .sif file, but apptainer is not on PATH" >&2
        exit 1
    elif [[ $CLEANER_CONTAINER != *.sif && $(srun --help 2>&1) != *--container-image* ]]; then
        echo "error: CLEANER_CONTAINER=$CLEANER_CONTAINER runs through Pyxis (srun --container-image), which this" \
             "cluster's srun lacks; build a .sif file for Apptainer instead (docs/cluster.md, Container)" >&2
        exit 1
    fi
fi

# contained WHERE CMD...: sets CONTAINED to CMD as it runs inside CLEANER_CONTAINER (CMD itself without one). WHERE
# is `step` for a command that an srun step runs (Ray's head and workers), `head` for one that this script runs on
# the head node itself (the preflight, the harness). Apptainer prefixes `apptainer exec`; Pyxis starts containers
# only in srun steps, so its options go into the step, and a `head` command becomes an srun step on the head node
# that shares its resources with the Ray head's (--overlap). The named container is imported once per node and job.
contained() {
    local where=$1
    shift
    if [[ -z ${CLEANER_CONTAINER:-} ]]; then
        CONTAINED=("$@")
    elif [[ $CLEANER_CONTAINER == *.sif ]]; then
        CONTAINED=(apptainer exec --nv --bind "$CONTAINER_MOUNTS" --pwd "$CLEANER_REPO" "$CLEANER_CONTAINER" "$@")
    else
        CONTAINED=(--container-image="$CLEANER_CONTAINER" --container-mounts="$CONTAINER_MOUNTS"
                   --container-workdir="$CLEANER_REPO" --container-name=cleaner "$@")
        if [[ $where == head ]]; then
            CONTAINED=(srun --nodes=1 --ntasks=1 --overlap -w "${NODES[0]}" "${CONTAINED[@]}")
        fi
    fi
}

# preflight MODEL OVERRIDES...: python -m harness.preflight for this job, on this node (the head) before Ray starts:
# GPUs, attention kernel, locked versions, the model folder, the data files, disk for the checkpoints, the head's
# address and port. It runs every check and stops the job (exit status 2) listing every failure with its fix. A
# verl.keep_checkpoints=N among the run's OVERRIDES sizes the disk check.
preflight() {
    local model=$1 spec arg args
    shift
    args=(--gpus "$GPUS_PER_NODE" --nodes "$NNODES" --head-address "$HEAD_ADDRESS" --ray-port "$CLEANER_RAY_PORT"
          --model "$model" --train "$CLEANER_TRAIN_FILE" --runs "$CLEANER_RUNS")
    # shellcheck disable=SC2086  # CLEANER_EVAL_SETS is a space-separated list
    for spec in $CLEANER_EVAL_SETS; do
        args+=(--eval "$spec")
    done
    for arg in "$@"; do
        if [[ $arg == verl.keep_checkpoints=* ]]; then
            args+=(--keep-checkpoints "${arg#*=}")
        fi
    done
    contained head "$CLEANER_PYTHON" -m harness.preflight "${args[@]}" -- "$@"  # the run's overrides: its sandbox
    cleaner_do "${CONTAINED[@]}"
}

# start_ray: a Ray head on the job's first node and a worker on each other node, each through its own srun step;
# exports RAY_ADDRESS, which the harness and verl's driver join.
start_ray() {
    local node
    export RAY_ADDRESS="$HEAD_ADDRESS:$CLEANER_RAY_PORT"
    echo "Ray head: ${NODES[0]} ($RAY_ADDRESS), $NNODES node(s) x $GPUS_PER_NODE GPU(s)" >&2
    contained step "$CLEANER_RAY" start --head --node-ip-address="$HEAD_ADDRESS" --port="$CLEANER_RAY_PORT" \
        --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --block
    cleaner_bg srun --nodes=1 --ntasks=1 -w "${NODES[0]}" "${CONTAINED[@]}"
    [[ $CLEANER_DRY_RUN == 1 ]] || sleep 10
    for node in "${NODES[@]:1}"; do
        contained step "$CLEANER_RAY" start --address="$RAY_ADDRESS" --num-cpus="$CPUS_PER_NODE" \
            --num-gpus="$GPUS_PER_NODE" --block
        cleaner_bg srun --nodes=1 --ntasks=1 -w "$node" "${CONTAINED[@]}"
    done
    wait_for_ray
}

# wait_for_ray: until Ray counts every GPU of the job (5 minutes at most)
wait_for_ray() {
    local want=$((NNODES * GPUS_PER_NODE)) have=0
    if [[ $CLEANER_DRY_RUN == 1 ]]; then
        return 0
    fi
    contained head "$CLEANER_PYTHON" -c 'import ray; ray.init(logging_level="ERROR")
print(int(ray.cluster_resources().get("GPU", 0)))'
    for _ in $(seq 60); do
        have=$("${CONTAINED[@]}" 2>/dev/null || echo 0)
        if (( have >= want )); then
            return 0
        fi
        sleep 5
    done
    echo "error: Ray at $RAY_ADDRESS counts $have of $want GPUs after 5 minutes" >&2
    exit 1
}

# eval_args: the +data.eval_paths.NAME=FILE overrides of CLEANER_EVAL_SETS, one per line (a bare NAME:
# cleaner.data finds the file under CLEANER_DATA_ROOT, else in its default folders, or says where it looked)
eval_args() {
    # shellcheck disable=SC2086  # CLEANER_EVAL_SETS is a space-separated list
    contained head "$CLEANER_PYTHON" -c 'import sys
from cleaner.data import DataError, resolve_path
for spec in sys.argv[1:]:
    name, _, path = spec.partition("=")
    try:
        print(f"+data.eval_paths.{name}={resolve_path(name, path or None).resolve()}")
    except (DataError, ValueError) as e:
        sys.exit(f"error: CLEANER_EVAL_SETS: {e}")' $CLEANER_EVAL_SETS
    (cd "$CLEANER_REPO" && "${CONTAINED[@]}")
}

# run_harness OVERRIDES...: python -m harness.train with this job's layout, paths and data, then OVERRIDES (the
# script's and the sbatch command line's); the run is named by its config, so the same command resumes it
run_harness() {
    local evals cmd
    evals=$(eval_args)
    mapfile -t evals <<< "$evals"
    contained head "$CLEANER_PYTHON" -m harness.train "cluster.nodes=$NNODES" "cluster.gpus_per_node=$GPUS_PER_NODE" \
        "runs_root=$CLEANER_RUNS" "data.train_path=$CLEANER_TRAIN_FILE" "${evals[@]}" "$@"
    cmd=("${CONTAINED[@]}")
    if [[ $CLEANER_DRY_RUN == 1 ]]; then
        cmd+=(dry_run=true)
    fi
    echo "+ $(cleaner_do_print "${cmd[@]}")" >&2
    (cd "$CLEANER_REPO" && exec "${cmd[@]}") &
    HARNESS_PID=$!
    trap 'end_of_job USR1' USR1
    trap 'end_of_job TERM' TERM
    local status=0
    while true; do  # a trapped signal ends `wait` early: wait again until the harness has stopped
        wait "$HARNESS_PID" && status=0 || status=$?
        kill -0 "$HARNESS_PID" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [[ $REQUEUE == 1 ]]; then
        echo "requeueing job $SLURM_JOB_ID: the same run resumes from its last checkpoint" >&2
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    return "$status"
}

# end_of_job SIGNAL: the job is about to end. USR1 is the time limit coming (the scripts' `#SBATCH
# --signal=B:USR1@600`): stop the harness (SIGTERM: it stops verl; its last saved checkpoint stays, the steps since
# are lost, at most verl.save_every) and requeue the job, which resumes the run. TERM is a preemption or scancel:
# stop the harness the same way and do not requeue (SLURM requeues a preempted job itself under `--requeue` and a
# requeue preemption mode; scancel means stop).
REQUEUE=0
end_of_job() {
    echo "received SIG$1: stopping the harness (pid $HARNESS_PID)" >&2
    [[ $1 == USR1 ]] && REQUEUE=1
    kill -TERM "$HARNESS_PID" 2>/dev/null || true
}
