"""The Optuna driver: trials are real lab runs launched through submitit_local; the study lives in SQLite, and a
driver killed with trials in flight resumes them with the same parameters, so no trial is lost or run twice."""

from __future__ import annotations

import os

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from harness import cli, records, schema, search

TINY = ["algo.steps=1", "algo.prompts_per_step=2", "algo.group_size=2", "algo.ppo_mini_batch_size=1",
        "algo.eval_problems=2"]


def composed_search(tmp_path, trials):
    schema.register()
    with initialize_config_dir(str(cli.CONF), version_base="1.3"):
        cfg = compose("sweep", overrides=["+sweeps=optuna", *TINY, f"runs_root={tmp_path / 'runs'}",
                                          f"search.trials={trials}", "search.parallel=2", cli.searchpath_override()],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, launcher


def test_search_completes_its_trials_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANER_THREADS", "1")
    cfg, launcher = composed_search(tmp_path, trials=2)
    storage = f"sqlite:///{tmp_path / 'optuna' / 'saar_lab.db'}"
    (tmp_path / "optuna").mkdir()
    # a driver that was killed after asking for a trial: the trial is left RUNNING in the storage
    killed = optuna.create_study(study_name="saar_lab", storage=storage, direction="maximize")
    orphan_params = {"saar.gamma": 0.25, "saar.max_retries": 2, "saar.rollback_probability": 0.5, "algo.lr": 1e-4}
    killed.enqueue_trial(orphan_params)
    search.suggest(killed.ask(), OmegaConf.to_container(cfg.search.space))
    log = []
    study = search.search(cfg, launcher, log=log.append)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert trials[0].state == optuna.trial.TrialState.FAIL and "left running by a killed driver" in log[0]
    assert any(t.params == orphan_params and t.state == optuna.trial.TrialState.COMPLETE for t in trials[1:])
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 2 and all((tmp_path / "runs" / r / "summary.json").exists() for r in runs)
    for t in trials[1:]:
        assert 0.0 <= t.value <= 1.0
    # rerun: the study already holds its trials, so nothing is asked or run again
    again = search.search(cfg, launcher, log=log.append)
    assert len(again.get_trials(deepcopy=False)) == len(trials) and sorted(os.listdir(tmp_path / "runs")) == runs


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
    with pytest.raises(RuntimeError, match="^2 trials failed; the jobs' logs are in "):
        search.search(cfg, launcher, log=log.append)
    failures = [line for line in log if " failed: " in line]
    assert len(failures) == 2 and all("ConfigError: model.path=" in line and "holds no checkpoint" in line
                                      for line in failures), failures
