"""The Optuna driver: trials are real lab runs launched through submitit_local; the study lives in SQLite under the
runs root, a driver killed with a trial in flight resumes it with the same parameters and goes on with new points,
so no trial is lost, run twice or repeated."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from harness import cli, records, schema, search
from harness.records import REPO

TINY = ["algo.steps=1", "algo.prompts_per_step=2", "algo.group_size=2", "algo.ppo_mini_batch_size=1",
        "algo.eval_problems=2"]
ENV = {**os.environ, "CLEANER_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread per job, lines as printed


def composed_search(tmp_path, trials):
    with initialize_config_dir(str(cli.CONF), version_base="1.3"):
        cfg = compose("sweep", overrides=["+sweeps=optuna", *TINY, f"runs_root={tmp_path / 'runs'}",
                                          f"search.trials={trials}", "search.parallel=2", cli.searchpath_override()],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, launcher


def driver(runs, trials, log_path):
    """The driver as a user starts it, in its own process, its output going to `log_path`."""
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "harness.search", "+sweeps=optuna", *TINY,
                                 f"runs_root={runs}", f"search.trials={trials}", "search.parallel=1"],
                                cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)


def run_folders(runs):
    return sorted(p for p in runs.iterdir() if p.name != "optuna") if runs.exists() else []


def test_a_driver_killed_while_a_trial_runs_resumes_without_repeating_a_point(tmp_path):
    """SIGKILL the driver while trial 1 runs, rerun the same command: trial 1 is failed and its point asked once
    more (trial 2), trial 3 is a new point, and each finished trial has one run record with one metrics line.
    Checked red: the sampler seeded with search.sampler_seed alone (with the duplicate check: trials 3 and 4 are
    pruned repeats; without it, trial 3 has trial 0's point, as before this test), the orphan's point not enqueued
    again, the study stored beside the runs root (the former `<runs_root>/../optuna`)."""
    runs = tmp_path / "runs"
    first = driver(runs, 3, tmp_path / "first.log")
    deadline = time.monotonic() + 600
    while len(run_folders(runs)) < 2:  # trial 0 is told before trial 1 is asked (parallel 1): trial 1 runs
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    first.kill()
    first.wait()
    storage = f"sqlite:///{runs / 'optuna' / 'saar_lab.db'}"
    killed = optuna.load_study(study_name="saar_lab", storage=storage).get_trials()
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"], "the kill did not catch trial 1 running"

    rerun = driver(runs, 3, tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()
    out = (tmp_path / "rerun.log").read_text().splitlines()
    assert out[0].startswith(f"study saar_lab in {runs / 'optuna' / 'saar_lab.db'} ") and "2 trials so far" in out[0]
    assert sum("left running by a killed driver" in line for line in out) == 1 and "trial 1 was" in out[1]
    trials = optuna.load_study(study_name="saar_lab", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert [t.params for t in trials[:2]] == [t.params for t in killed]
    assert trials[2].params == trials[1].params  # the orphan's point, asked again once
    points = [tuple(t.params.values()) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(points)) == 3, points

    cfg, launcher = composed_search(tmp_path, trials=3)
    folders = {records.config_hash(search.trial_config(cfg, t.params)): t for t in trials if t.state.name == "COMPLETE"}
    assert [p.name for p in run_folders(runs)] == sorted(folders)
    for name, t in folders.items():
        run = runs / name
        assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
        assert json.loads((run / "summary.json").read_text())["eval"]["accuracy"] == t.value
        invocations = json.loads((run / "env.json").read_text())["invocations"]
        assert [i["finished"] for i in invocations] == [True]  # the orphan's job finished it; trial 2 skipped it

    # the same command once more: the study holds its trials, so nothing is asked or run
    log = []
    again = search.search(cfg, launcher, log=log.append)
    assert len(again.get_trials()) == 4 and [p.name for p in run_folders(runs)] == sorted(folders)
    assert log[0].startswith("study saar_lab in ") and "4 trials so far" in log[0], log
    assert log[1].startswith("best trial ") and all(" value tried (" in line for line in log[2:]), log  # no ask


def test_a_repeated_point_is_reported_not_run_and_an_exhausted_space_ends_the_search(tmp_path):
    """A one-point space whose point is finished: the next ask repeats it; it is pruned, not run and not counted,
    and the search stops short of its 2 trials. Checked red: the duplicate told complete with trial 0's value (so
    counted), no check against earlier trials (a run starts), no exhaustion check (the driver asks forever)."""
    cfg, launcher = composed_search(tmp_path, trials=2)
    with open_dict(cfg):
        cfg.search.space = {"saar.max_retries": {"type": "int", "low": 2, "high": 2}}
    (tmp_path / "runs" / "optuna").mkdir(parents=True)
    study = optuna.create_study(study_name="saar_lab", storage=f"sqlite:///{tmp_path / 'runs/optuna/saar_lab.db'}",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"saar.max_retries": 2}, value=0.5, distributions={
        "saar.max_retries": optuna.distributions.IntDistribution(2, 2)}))
    log = []

    def log_line(line):
        log.append(line)
        assert len(log) <= 4, log  # a driver that asks forever fails here instead of hanging

    trials = search.search(cfg, launcher, log=log_line).get_trials()
    assert [(t.state.name, t.params) for t in trials] == [("COMPLETE", {"saar.max_retries": 2}),
                                                          ("PRUNED", {"saar.max_retries": 2})]
    assert log[1:] == ["trial 1: {'saar.max_retries': 2} repeats trial 0: pruned, not run",
                       "the trials hold all 1 points of the search space: stopping at 1 of 2 trials",
                       "best trial 0: eval.accuracy = 0.5000 with {'saar.max_retries': 2}"]
    assert run_folders(tmp_path / "runs") == []


def test_a_search_whose_choice_is_the_lowest_value_tried_says_to_widen_the_range(tmp_path):
    """A finished study (its trials added by hand) whose best lr is the lowest it tried: the driver's last line says
    so and how to widen. Checked red: the line dropped; the line given for the best of an inside choice too."""
    cfg, launcher = composed_search(tmp_path, trials=3)
    with open_dict(cfg):
        cfg.search.space = {"algo.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    (tmp_path / "runs" / "optuna").mkdir(parents=True)
    study = optuna.create_study(study_name="saar_lab", storage=f"sqlite:///{tmp_path / 'runs/optuna/saar_lab.db'}",
                                direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    for value, score in ((2e-5, 0.9), (1e-4, 0.8), (5e-4, 0.5)):
        study.add_trial(optuna.trial.create_trial(params={"algo.lr": value}, value=score,
                                                  distributions={"algo.lr": lr}))
    log = []
    search.search(cfg, launcher, log=log.append)
    assert log[1:] == ["best trial 0: eval.accuracy = 0.9000 with {'algo.lr': 2e-05}",
                       "the best algo.lr = 2e-05 is the lowest value tried (2e-05 to 0.0005): not inside the explored "
                       "range; widen search.space.algo.lr past it, raise search.trials and rerun the same command "
                       "(the study keeps its trials)"]
    study.add_trial(optuna.trial.create_trial(params={"algo.lr": 1e-5}, value=0.7, distributions={"algo.lr": lr}))
    log.clear()
    with open_dict(cfg):
        cfg.search.trials = 4
    search.search(cfg, launcher, log=log.append)
    assert log[1:] == ["best trial 0: eval.accuracy = 0.9000 with {'algo.lr': 2e-05}"]
    assert run_folders(tmp_path / "runs") == []


def test_space_size_counts_integer_points_and_a_float_key_makes_it_infinite():
    """Checked red: `high - low` (each range one short), a float key counted as one point."""
    assert search.space_size({"a": {"type": "int", "low": 1, "high": 5},
                              "b": {"type": "int", "low": 0, "high": 2, "log": False}}) == 15
    assert search.space_size({"a": {"type": "int", "low": 1, "high": 5},
                              "b": {"type": "float", "low": 0.0, "high": 1.0}}) == math.inf


def test_a_trial_config_is_the_base_config_with_the_sampled_values(tmp_path):
    cfg, _ = composed_search(tmp_path, trials=1)
    trial = search.trial_config(cfg, {"saar.gamma": 0.42, "algo.lr": 3e-4})
    assert (trial.saar.gamma, trial.algo.lr, trial.search) == (0.42, 3e-4, None)
    assert records.config_hash(trial) != records.config_hash(cfg) and cfg.saar.gamma == 0.5


def test_an_empty_space_is_refused(tmp_path):
    cfg, launcher = composed_search(tmp_path, trials=1)
    with open_dict(cfg):
        cfg.search.space = {}
    with pytest.raises(schema.ConfigError, match="search.space is empty"):
        search.search(cfg, launcher)


def test_a_search_whose_trials_all_fail_stops_instead_of_asking_forever(tmp_path):
    cfg, launcher = composed_search(tmp_path, trials=2)
    with open_dict(cfg):
        cfg.model.path = str(tmp_path / "no_checkpoint")  # every trial's job fails when it looks for it
    log = []
    with pytest.raises(search.SearchFailed, match="^2 trials failed, the last with harness.schema.ConfigError: "
                                                  "model.path="):
        search.search(cfg, launcher, log=log.append)
    failures = [line for line in log if " failed: " in line]
    assert len(failures) == 2 and all("ConfigError: model.path=" in line and "holds no checkpoint" in line
                                      for line in failures), failures
