"""Every YAML under harness/conf and sweeps/ composes and validates; the paper presets hold Table 5's values; every
schema field is documented."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from cleaner.recipe import AlgoConfig
from harness import records, schema
from harness.cli import CONF
from harness.records import REPO

PAPER = REPO / "harness" / "paper_results.yaml"  # the paper's reported figures, in the repository
GROUP_FILES = sorted(p for p in CONF.glob("*/**/*.yaml"))
SWEEP_FILES = sorted((REPO / "sweeps").glob("**/*.yaml"))


def test_the_yaml_files_are_all_found():
    assert len(list(CONF.glob("*.yaml"))) == 2  # train.yaml, sweep.yaml
    assert len(GROUP_FILES) == 32
    assert len(SWEEP_FILES) == 10


@pytest.mark.parametrize("config_name", ["train", "sweep"])
def test_primary_configs_compose_and_validate(composed, config_name):
    cfg = composed(config_name=config_name)
    schema.validate(cfg)
    assert schema.lab_train_config(cfg).rollout.saar.enabled


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: str(p.relative_to(CONF)))
def test_every_group_option_composes_and_validates(composed, path):
    group, option = path.parent.name, path.stem
    cfg = composed([f"{group}={option}"])
    schema.validate(cfg)
    if group in ("model", "algo", "saar", "data", "engine", "sandbox", "cluster"):
        own = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}
        assert OmegaConf.to_container(cfg[group]) == {**OmegaConf.to_container(cfg[group]), **own}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_composes_and_each_of_its_points_validates(composed, path):
    cfg = composed([f"+sweeps={path.stem}"], "sweep", hydra=True)
    params = cfg.hydra.sweeper.params or {}
    assert params or cfg.search is not None, f"{path.name} sweeps nothing"
    for key, values in params.items():
        for value in str(values).split(","):
            schema.validate(composed([f"+sweeps={path.stem}", f"{key}={value}"]))
    if cfg.search is not None:
        for key in cfg.search.space:
            assert OmegaConf.select(cfg, key) is not None, f"search space key {key} is not a config key"


def test_launchers_select_submitit_and_size_the_job_by_the_cluster_group(composed):
    """A lab run asks SLURM for what a 3.8 M model needs; a paper preset for a node of 4 GPUs for 4 days. Breakage
    checked: the old fixed launcher asked 32 CPUs, 480 GB and 4 days for the lab."""
    local = composed([], "sweep", hydra=True).hydra.launcher
    lab = composed(["launcher=slurm"], "sweep", hydra=True).hydra.launcher
    slurm = composed(["launcher=slurm", "preset=qwen3_4b"], "sweep", hydra=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and slurm._target_.endswith("SlurmLauncher")
    size = ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
    assert [lab[k] for k in size] == [1, None, 2, 8, 180] and lab.partition is None
    assert [slurm[k] for k in size] == [1, 4, 32, 480, 5760]


def test_presets_hold_table_5(composed):
    hp = yaml.safe_load(PAPER.read_text())["hyperparameters"]
    for preset, model in (("qwen3_4b", "qwen3_4b"), ("qwen2_5_7b", "qwen2_5_7b")):
        cfg = composed([f"preset={preset}"])
        a, s = cfg.algo, cfg.saar
        assert a.lr == hp["learning_rate"][model]
        assert a.lr_warmup_steps == hp["lr_warmup_steps"]
        assert a.prompts_per_step == hp["train_batch_size"] and a.group_size == hp["group_size"]
        assert a.ppo_mini_batch_size == hp["ppo_mini_batch_size"]
        assert (a.clip_ratio_low, a.clip_ratio_high, a.clip_ratio_c) == (
            hp["clip_ratio_low"], hp["clip_ratio_high"], hp["clip_ratio_c"])
        assert a.adv_estimator == hp["adv_estimator"] and a.loss_agg_mode == hp["loss_agg_mode"]
        assert a.overlong_buffer_tokens == hp["overlong_buffer"]["len"]
        assert a.overlong_penalty_factor == hp["overlong_buffer"]["penalty_factor"]
        assert a.max_response_tokens == hp["max_response_length"] and a.max_turns == hp["max_turns"]
        assert (a.temperature, a.top_p) == (hp["train_sampling"]["temperature"], hp["train_sampling"]["top_p"])
        assert a.eval_top_p == hp["eval_sampling"]["top_p"]
        assert a.max_tool_response_chars == 256 and cfg.sandbox.timeout_s == 4.0  # "4 s per execution", "256 chars"
        assert (s.enabled, s.gamma, s.max_retries) == (True, hp["saar"]["gamma"], hp["saar"]["max_retries_K"])
        assert s.rollback_probability == hp["saar"]["rollback_probability"][model]
        assert cfg.model.dtype == "float16" and cfg.cluster.kind == "verl" and cfg.engine.kind == "sglang"


def test_demyagent_preset_holds_its_recipe(composed):
    rec = yaml.safe_load(PAPER.read_text())["demyagent_recipe"]
    cfg = composed(["preset=demyagent"])
    a = cfg.algo
    assert (a.steps, a.prompts_per_step, a.group_size, a.ppo_mini_batch_size, a.lr) == (
        rec["reported_rl_steps"], rec["train_batch_size"], rec["group_size"], rec["ppo_mini_batch_size"],
        rec["learning_rate"])
    assert a.steps * a.prompts_per_step == rec["prompts_seen_at_750_steps"]
    assert a.eval_samples == rec["eval_samples_per_problem"] and not cfg.saar.enabled


@pytest.mark.parametrize("preset, preloaded", [("qwen3_4b", ("numpy", "sympy")), ("qwen2_5_7b", ("numpy", "sympy")),
                                               ("demyagent", ("numpy", "sympy")), ("lab", ())])
def test_the_cluster_presets_preload_the_papers_tool_environment(composed, preset, preloaded):
    """The paper's executor pre-imports numpy and sympy; the cluster presets' sandboxes do, the lab's keeps the
    standard library. Checked red: the presets without `override /sandbox: paper` (an empty list, as before)."""
    assert schema.sandbox_config(composed([f"preset={preset}"])).preload_modules == preloaded


@pytest.mark.parametrize("cls", [schema.ModelSchema, AlgoConfig, schema.DataSchema, schema.EngineSchema,
                                 schema.ClusterSchema, schema.VerlSchema, schema.SearchSchema, schema.RunSchema],
                         ids=lambda c: c.__name__)
def test_every_harness_field_has_a_comment(cls):
    lines = inspect.getsource(cls).splitlines()
    for f in dataclasses.fields(cls):
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}:"))
        documented = "#" in lines[at] or lines[at - 1].strip().startswith("#")
        if cls is schema.RunSchema and f.name in schema.GROUPS:
            documented = True  # a group: documented by its own schema
        assert documented, f"{cls.__name__}.{f.name} has no comment"


@pytest.mark.parametrize("mirror, source", [(schema.SaarSchema, "SaarConfig"), (schema.SandboxSchema, "SandboxConfig"),
                                            (schema.AlgoSchema, "AlgoConfig")])
def test_mirrored_groups_match_the_cleaner_dataclasses(mirror, source):
    """Each knob declared once: the algo, saar and sandbox groups are the library's dataclasses field for field (the
    algo group adds only the recipe's `name`)."""
    import cleaner.recipe
    import cleaner.saar
    import cleaner.sandbox

    cls = {"SaarConfig": cleaner.saar.SaarConfig, "SandboxConfig": cleaner.sandbox.SandboxConfig,
           "AlgoConfig": cleaner.recipe.AlgoConfig}[source]
    own = ["name"] if cls is cleaner.recipe.AlgoConfig else []
    assert [f.name for f in dataclasses.fields(mirror)] == [f.name for f in dataclasses.fields(cls)] + own
    values = {k: v for k, v in dataclasses.asdict(mirror()).items() if k not in own}
    assert cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}) == cls()


def test_lab_translation_is_exact(composed):
    cfg = composed(["algo.prompts_per_step=8", "algo.ppo_mini_batch_size=2", "saar.gamma=0.3", "seed=7",
                    "sandbox.timeout_s=2.5", "saar.from_step=100"])
    t = schema.lab_train_config(cfg)
    assert (t.algo.mini_batches, t.rollout.saar.gamma, t.seed, t.sandbox.timeout_s) == (4, 0.3, 7, 2.5)
    assert t.saar.from_step == 100
    assert (t.rollout.max_turns, t.rollout.max_response_tokens, t.algo.loss_config().clip_ratio_high) == (4, 320, 0.28)
    assert t.sandbox.cpu_time_s == 2.5  # the CPU-time limit follows the wall-clock one unless set


def test_paper_presets_are_refused_by_the_lab_trainer(composed):
    with pytest.raises(schema.ConfigError, match="model.dtype='float16'"):
        schema.lab_train_config(composed(["preset=qwen3_4b", "cluster=lab", "engine=transformers"]))


def test_the_lab_trainers_defaults_are_the_lab_preset_but_its_tuned_lr(composed):
    """One recipe: `TrainConfig()` (the library's defaults, what `cleaner.lab.trainer` runs when called directly)
    is what `python -m harness.train` runs with no overrides, but for the learning rate the lab's searches chose,
    which harness/conf/algo/lab.yaml declares and nothing else does (no default copied into YAML). Breakage
    checked: eleven trainer defaults copied into lab.yaml."""
    from cleaner.lab.config import TrainConfig

    lab = yaml.safe_load((CONF / "algo" / "lab.yaml").read_text())
    assert set(lab) == {"name", "lr"} and lab["lr"] != AlgoConfig.lr
    assert schema.lab_train_config(composed()) == TrainConfig(algo=AlgoConfig(lr=lab["lr"]))
    for sweep in (REPO / "sweeps").glob("*.yaml"):  # the sweeps use it, none restates it
        assert "lr:" not in sweep.read_text().replace("algo.lr:", ""), sweep.name


@pytest.mark.parametrize("saar, study", [("baseline", "tune_lr_saar_False"), ("cleaner", "tune_lr_saar_True")])
def test_the_lr_tuning_sweep_scores_on_the_validation_split_one_study_per_method(composed, saar, study):
    from harness import schema

    cfg = composed(["+sweeps=tune_lr", f"saar={saar}"])
    assert cfg.search.study == study and list(cfg.search.space) == ["algo.lr"]
    train = schema.lab_train_config(cfg).algo
    assert (train.eval_split, train.eval_problems, train.steps) == ("val", 100, 20)


@pytest.mark.parametrize("entry", ["harness.train", "harness.eval"])
def test_a_sweep_file_gives_one_run_of_train_or_eval_its_values(composed, entry):
    """`+sweeps=comparison saar=baseline seed=3` names, from `harness.train` or `harness.eval`, the run the
    comparison sweep records for that seed. Breakage checked: without the sweeps' search path, `+sweeps=comparison`
    became a new key `sweeps` and the file's values were lost: another run, with the default steps and lr."""
    proc = subprocess.run([sys.executable, "-m", entry, "--cfg", "job", "+sweeps=comparison", "saar=baseline",
                           "seed=3"], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    explicit = composed(["saar=baseline", "seed=3", "algo.steps=40", "algo.eval_problems=500", "algo.eval_every=10"])
    assert records.config_hash(OmegaConf.create(proc.stdout)) == records.config_hash(explicit)
