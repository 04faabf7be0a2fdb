"""Bad configs fail before anything runs, with one message that names the key (and, for unknown keys, the valid
ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli, records, schema
from harness.records import REPO


def test_gamma_out_of_range_exits_2_naming_gamma(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.train", "saar.gamma=1.5", f"runs_root={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: saar.gamma must be in [0, 1], got 1.5"
    assert not list(tmp_path.iterdir()), "nothing may be written for a refused config"


def test_training_zero_steps_exits_2_pointing_to_harness_eval(tmp_path, bench_math_root):
    proc = subprocess.run([sys.executable, "-m", "harness.train", "preset=smollm2", f"runs_root={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not list(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines()[-1] == ("error: algo.steps=0 trains nothing: evaluate model.path with "
                                                    "python -m harness.eval and the same overrides")


def test_unknown_key_exits_2_listing_the_valid_keys():
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", "-m", "saar.gama=0.3,0.5"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: unknown key 'saar.gama': saar has no 'gama'; valid keys: enabled, gamma, "
                                   "max_retries, rollback_probability, similarity, from_step")


@pytest.mark.parametrize("key, expected", [
    ("algo.lrr", "unknown key 'algo.lrr': algo has no 'lrr'; valid keys: steps, prompts_per_step,"),
    ("sed", "unknown key 'sed': the config has no 'sed'; valid keys: model, algo, saar,"),
    ("saar.gamma.x", None),  # gamma is a float: Hydra itself refuses to go inside it
    ("data.eval_paths.aime24", None),  # any key is valid inside a dict field
    ("search.space.saar.gamma", None),
    ("sandbox.remote_url", None),
])
def test_unknown_key_messages(key, expected):
    problem = cli.unknown_key(key)
    assert (problem is None) if expected is None else problem.startswith(expected)


@pytest.mark.parametrize("override, message", [
    ("saar.max_retries=-1", "saar.max_retries (K) must be >= 0, got -1"),
    ("saar.rollback_probability=1.2", "saar.rollback_probability (p) must be in [0, 1], got 1.2"),
    ("saar.gamma=-0.1", "saar.gamma must be in [0, 1], got -0.1"),
    ("saar.similarity=jaccard", "unknown similarity 'jaccard'; valid: "),
    ("saar.from_step=-1", "saar.from_step must be >= 0, got -1"),
    ("algo.ppo_mini_batch_size=3", "algo.ppo_mini_batch_size=3 must be >= 1 and divide algo.prompts_per_step=8"),
    ("algo.group_size=0", "algo.group_size must be >= 1, got 0"),  # from AlgoConfig's own checks, as the next ones
    ("algo.lr=0", "algo.lr and algo.max_grad_norm must be > 0 and algo.lr_warmup_steps, algo.eval_every >= 0; got 0"),
    ("algo.eval_split=train", "algo.eval_split='train'; valid: 'test', 'val'"),
    ("algo.rollout_is=seq", "algo.rollout_is='seq'; valid: '', 'token', 'sequence'"),
    ("cluster.mem_gb=0", "cluster.nodes, cluster.cpus_per_task, cluster.mem_gb, cluster.timeout_min must be >= 1"),
    ("algo.eval_top_p=0", "algo.temperature must be > 0 and algo.top_p, algo.eval_top_p in (0, 1]; got 1.0, 1.0, 0"),
    ("algo.loss_agg_mode=mean", "unknown loss_agg_mode 'mean'; valid: "),
    ("sandbox.timeout_s=0", "sandbox.timeout_s must be a positive number, got 0"),
    ("engine.kind=vllm", "engine.kind='vllm'; valid: transformers, sglang"),
])
def test_bad_values_name_their_key(composed, override, message):
    with pytest.raises(schema.ConfigError) as e:
        schema.validate(composed([override]))
    assert str(e.value).startswith(message)


def test_missing_data_paths_are_named(composed, tmp_path, bench_math_root):
    with pytest.raises(schema.ConfigError, match=r"^data.train_path is empty: data=open_agentrl needs a file"):
        schema.check_paths(composed(["data=open_agentrl"]))
    train = tmp_path / "train.parquet"
    train.write_bytes(b"")
    cfg = composed(["data=open_agentrl", f"data.train_path={train}", f"+data.eval_paths.aime24={tmp_path}/no.parquet"])
    with pytest.raises(schema.ConfigError, match=rf"^data.eval_paths.aime24={tmp_path}/no.parquet does not exist$"):
        schema.check_paths(cfg)
    # evaluation only (algo.steps=0): no training file needed; an empty path means the data root's copy
    schema.check_paths(composed(["preset=smollm2"]))
    with pytest.raises(schema.ConfigError, match=r"^data.eval_paths.mmlu: unknown data set 'mmlu'; valid: aime24,"):
        schema.check_paths(composed(["preset=smollm2", "+data.eval_paths.mmlu="]))
    with pytest.raises(schema.ConfigError, match=r"^algo.steps must be >= 0 \(0: evaluate model.path, no training\)"):
        schema.validate(composed(["algo.steps=-1"]))


def test_strict_refuses_a_dirty_tree_naming_the_files(composed, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    (repo / "results" / "tuning").mkdir(parents=True)
    (repo / "results" / "tuning" / "study.db").write_text("1")
    subprocess.run(git + ["add", "a.py", "results"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    monkeypatch.setattr(records, "REPO", repo)
    cfg = composed(["strict=true", f"runs_root={tmp_path / 'runs'}"])
    ran = []
    (repo / "results" / "tuning" / "study.db").write_text("2")  # committed records that runs rewrite: clean
    records.run_record(cfg, lambda d: ran.append(d) or {"eval": {}}, log=lambda s: None)  # clean: runs
    (repo / "a.py").write_text("x = 2\n")
    with pytest.raises(schema.ConfigError, match=r"^strict=true needs a committed tree, .*: a.py$"):
        records.run_record(composed(["strict=true", "seed=1", f"runs_root={tmp_path / 'runs'}"]),
                           lambda d: ran.append(d), log=lambda s: None)
    assert len(ran) == 1
    assert os.listdir(tmp_path / "runs") == [records.config_hash(cfg)]


@pytest.mark.parametrize("overrides, message", [
    (["search.trials=2"], "error: search.trials sets a search, which has no space yet: start from +sweeps=optuna "
                          "(sweeps/optuna.yaml)"),
    (["+sweeps=gamma", "search.trials=2"], "error: search.trials sets a search, which has no space yet: start from "
                                           "+sweeps=optuna (sweeps/optuna.yaml)"),
    (["+sweeps=optuna", "search.trials=0"], "error: search.trials must be at least 1, got 0"),
    (["+sweeps=optuna", "search.parallel=0"], "error: search.parallel must be at least 1, got 0"),
])
def test_a_search_without_a_space_or_trials_exits_2_with_one_line(tmp_path, overrides, message):
    proc = subprocess.run([sys.executable, "-m", "harness.search", *overrides, f"runs_root={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in proc.stderr


def test_a_finished_lab_run_from_another_sft_checkpoint_is_not_reused(composed, tmp_path):
    """The lab's SFT checkpoint is the schema's default model.path, so a new SFT recipe keeps every run's name: a
    finished record made from another checkpoint exits 2 naming both, instead of being reused."""
    cfg = composed([f"runs_root={tmp_path}"])
    run = tmp_path / records.config_hash(cfg)
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"init": "0123456789ab", "steps": 10, "eval": {}}))
    proc = subprocess.run([sys.executable, "-m", "harness.train", f"runs_root={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: run {run} was trained from the checkpoint 0123456789ab, not {Path(cfg.model.path).name} "
        f"(model.path={cfg.model.path}); move that folder away to train again")


def test_a_bad_value_in_the_second_job_of_a_sweep_is_refused_before_the_first_runs(tmp_path):
    """Every job of a sweep is checked in the driver before any is launched: one line naming the job, exit 2, no
    record and no Hydra folder. Breakage checked: the old driver trained gamma 0.3 to the end, then printed a
    32-line submitit traceback for 1.5."""
    for bad in ("saar.gamma=0.3,1.5", "algo.steps=2,-1"):
        proc = subprocess.run([sys.executable, "-m", "harness.sweep", "-m", bad, f"runs_root={tmp_path / 'runs'}",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"error: job 2 of 2 ({bad.split('=')[0]}=")
        assert "(no job was started)" in proc.stderr
        assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep").exists()


def test_a_slurm_sweep_with_a_bad_job_queues_nothing(tmp_path):
    """launcher=slurm: the bad job is refused before anything is submitted (a fake `sbatch` records any call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/{tool}-called\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", "-m", "launcher=slurm", "algo.steps=2,-1",
                           f"runs_root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: job 2 of 2 (") and "algo.steps=-1" in proc.stderr
    assert not list(tmp_path.glob("*-called")) and not (tmp_path / "sweep").exists()


@pytest.fixture(scope="module")
def without_bwrap(tmp_path_factory):
    """A PATH like this machine's, without bubblewrap: every other command of /usr/bin and /bin, linked."""
    bin_dir = tmp_path_factory.mktemp("nobwrap")
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(folder).iterdir() if Path(folder).is_dir() else ():
            if tool.name != "bwrap" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    return {**os.environ, "PATH": str(bin_dir)}


@pytest.mark.parametrize("command", [
    ["harness.train"],
    ["harness.sweep", "-m", "+sweeps=methods"],
    ["harness.eval", "algo.steps=0"],
    ["harness.search", "+sweeps=tune_lr"],
])
def test_a_missing_bubblewrap_stops_every_entry_point_before_any_work_with_the_fix(without_bwrap, tmp_path, command):
    """Without bubblewrap each entry point stops before it trains, evaluates or launches anything, with one line
    that names the fix (install it, or backend=rlimit and what that gives up). Breakage checked: without the
    prerequisite check the sweep died after 60 s in a Hydra traceback and a search reported `FailedJobError` for
    every trial."""
    proc = subprocess.run([sys.executable, "-m", *command, f"runs_root={tmp_path / 'runs'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=without_bwrap)
    [line] = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "bubblewrap not found" in line and "apt-get install bubblewrap" in line
    assert "sandbox.backend='rlimit'" in line and "host's files and network" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_make_sandbox_check_names_the_fix_in_one_line(without_bwrap):
    """Every make target that runs model code depends on sandbox-check (the Makefile), which is this command."""
    ok = subprocess.run([sys.executable, "-m", "cleaner.sandbox", "--check"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("sandbox ready: backend bwrap")
    missing = subprocess.run([sys.executable, "-m", "cleaner.sandbox", "--check"], capture_output=True, text=True,
                             timeout=120, env=without_bwrap)
    assert missing.returncode == 1 and missing.stderr.startswith("cleaner.sandbox: bubblewrap not found")
    makefile = (REPO / "Makefile").read_text()
    for target in ("run", "comparison", "sft", "test", "test-slow", "bench"):
        assert f"\n{target}: sandbox-check\n" in makefile, target


def test_a_failed_jobs_own_exception_is_reported_whatever_its_name(tmp_path):
    """A real submitit job raising an exception whose name ends in neither Error nor Exception: the one line names
    it and its message. Breakage checked: the old reader printed `FailedJobError: - <log path>`."""
    import submitit

    from cleaner.sandbox import SandboxConfig, check_ready

    ex = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    job = ex.submit(check_ready, SandboxConfig(bwrap_path=str(tmp_path / "no-bwrap")))
    with pytest.raises(Exception) as e:
        job.result()
    assert type(e.value).__name__ == "FailedJobError"
    assert cli.one_line(e.value) == (f"cleaner.sandbox.backends.SandboxUnavailable: bubblewrap not found "
                                     f"(sandbox.bwrap_path='{tmp_path / 'no-bwrap'}'). Install it (e.g. `apt-get "
                                     "install bubblewrap`) and allow user namespaces, or set sandbox.backend='rlimit' "
                                     "to run cells without namespace isolation (they then see the host's files and "
                                     "network).")
    assert cli.one_line(KeyboardInterrupt()) == "KeyboardInterrupt: "


LIGHT = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "verl", "pandas") if m in sys.modules)
print("heavy:", ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [
    ["harness.train", "--help"], ["harness.sweep", "--help"], ["harness.eval", "--help"],
    ["harness.search", "--help"], ["harness.train", "saar.gama=0.5"], ["harness.sweep", "-m", "saar.gama=0.3,0.5"],
    ["harness.report", "--help"], ["harness.prepare_data", "--help"], ["harness.preflight", "--help"],
    ["cleaner.purify", "--help"], ["cleaner.sandbox", "--help"], ["harness.quotes", "--help"]])
def test_help_and_argument_errors_import_no_tensor_library(argv):
    """`--help` and a refused argument answer before torch, transformers, verl or pandas is imported (what made them
    take 28 s on a loaded machine), judged by the modules loaded, not by a clock. Checked red: `cleaner.bench` imported
    at the top of harness.prepare_data; the lab tokenizer at the top of cleaner.purify's command line."""
    done = subprocess.run([sys.executable, "-c", LIGHT, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stderr.splitlines()[-1] == "heavy: ", done.stderr[-2000:]
