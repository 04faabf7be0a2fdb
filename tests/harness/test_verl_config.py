"""harness.verl against verl 0.9.1 itself: the translated overrides compose with verl's own Hydra config
(`ppo_trainer`), the composed configs of the 4B and 7B presets hold Table 5 key by key (read from
harness/paper_results.yaml), every key is one verl has, and the keys that verl 0.9.1 would silently ignore
elsewhere are read where we put them (by verl's own reward loader, reward manager, config dataclasses and
validator). Then the entry point: dry_run prints one override per line, and cluster=verl on a machine without GPUs
exits 2 with one clear line. What stays unverified: anything on GPUs (no trainer, SGLang or Ray run here)."""

from __future__ import annotations

import inspect
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import verl
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from cleaner import verl_plugin
from harness import cli, records, schema
from harness import verl as harness_verl
from harness.records import REPO

PAPER = REPO / "harness" / "paper_results.yaml"  # the paper's reported figures, in the repository
VERL_CONF = Path(verl.__file__).parent / "trainer" / "config"
MISSING = object()


def has_key(cfg, key):
    """Whether the dotted `key` is in `cfg` (a missing value, ???, counts as present)."""
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return node is not None and last in list(node.keys())
# keys verl's YAML lacks, so they are added with `+`, and the verl code that reads each
PLUS_KEYS = {
    "actor_rollout_ref.actor.fsdp_config.mixed_precision.": "FSDPEngineConfig.mixed_precision, read by FSDPEngine",
    "reward.reward_kwargs.": "DAPORewardManager.__init__ (overlong_buffer_cfg, max_resp_len)",
    "reward.custom_reward_function.reward_kwargs.": "get_custom_reward_fn: keyword arguments of the reward",
    "ray_kwargs.ray_init.runtime_env.env_vars.": "run_ppo: merged into ray.init's runtime_env",
    "actor_rollout_ref.model.override_config.": "HFModelConfig: attn_implementation (default flash_attention_2)",
}


@pytest.fixture(scope="module")
def hp():
    return yaml.safe_load(PAPER.read_text())["hyperparameters"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small training file in the Open-AgentRL-30K format and two benchmark files."""
    root = tmp_path_factory.mktemp("data")
    train = root / "Open-AgentRL-30K.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"data_source": "math_dapo", "prompt": [{"role": "user", "content": "What is 6 * 7?"}],
         "reward_model": {"ground_truth": "42"}, "extra_info": {"index": 0}},
        {"data_source": "train-code-taco-easy", "prompt": [{"role": "user", "content": "Print 2n."}],
         "reward_model": {"ground_truth": json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]})},
         "extra_info": {"index": 1}}]), train)
    aime = root / "aime24.jsonl"
    aime.write_text(json.dumps({"id": 60, "problem": "Find 2 + 3.", "answer": "5", "url": "", "solution": ""}) + "\n")
    gpqa = root / "gpqa.csv"
    gpqa.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\nQ?,a,b,c,d\n")
    return {"train": train, "aime24": aime, "gpqa_diamond": gpqa, "runs": root / "runs", "model": root / "model"}


def run_config(files, *overrides):
    """The composed harness config of a paper run on the fixture files."""
    args = [f"data.train_path={files['train']}", f"+data.eval_paths.aime24={files['aime24']}",
            f"+data.eval_paths.gpqa_diamond={files['gpqa_diamond']}", f"runs_root={files['runs']}",
            f"model.path={files['model']}", *overrides, cli.searchpath_override()]
    with initialize_config_dir(str(cli.CONF), version_base="1.3"):
        cfg = compose("train", overrides=args)
    schema.validate(cfg)
    return cfg


def verl_config(ovr):
    """verl's own ppo_trainer config composed with `ovr` (Hydra's keys checked, then dropped)."""
    with initialize_config_dir(str(VERL_CONF), version_base=None):
        cfg = compose("ppo_trainer", overrides=list(ovr), return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class Translated:
    """A run config, its overrides (as written to the run folder), the agent-loop YAML and verl's config."""

    def __init__(self, files, *overrides):
        self.cfg = run_config(files, *overrides)
        self.run_dir = (Path(self.cfg.runs_root) / records.config_hash(self.cfg)).resolve()
        self.ovr, self.job, _ = harness_verl.prepare_files(self.cfg, self.run_dir, self.cfg.test_time_saar)
        [self.agent] = yaml.safe_load((self.job / harness_verl.AGENT_LOOP_FILE).read_text())
        self.verl = verl_config(self.ovr)

    def __getitem__(self, key):
        return OmegaConf.select(self.verl, key, default=MISSING)


@pytest.fixture(scope="module")
def runs(files):
    cache = {}

    def get(*overrides):
        if overrides not in cache:
            cache[overrides] = Translated(files, *overrides)
        return cache[overrides]

    return get


@pytest.mark.parametrize("model", ["qwen3_4b", "qwen2_5_7b"])
def test_the_composed_verl_config_holds_table_5(runs, hp, model):
    t = runs(f"preset={model}")
    a, r, rw = "actor_rollout_ref.actor.", "actor_rollout_ref.rollout.", "reward.reward_kwargs."
    expected = {
        "algorithm.adv_estimator": hp["adv_estimator"],
        a + "optim.lr": hp["learning_rate"][model],
        a + "optim.lr_warmup_steps": hp["lr_warmup_steps"],
        "data.train_batch_size": hp["train_batch_size"],
        r + "n": hp["group_size"],
        a + "ppo_mini_batch_size": hp["ppo_mini_batch_size"],
        a + "ppo_epochs": 1,  # "4 updates per step, 1 epoch"
        a + "clip_ratio_low": hp["clip_ratio_low"],
        a + "clip_ratio_high": hp["clip_ratio_high"],
        a + "clip_ratio_c": hp["clip_ratio_c"],
        a + "loss_agg_mode": hp["loss_agg_mode"],
        a + "entropy_coeff": hp["entropy_coeff"],
        a + "use_kl_loss": False, "algorithm.use_kl_in_reward": False,  # "kl: none"
        "reward.reward_manager.name": "dapo",
        rw + "overlong_buffer_cfg.enable": True,
        rw + "overlong_buffer_cfg.len": hp["overlong_buffer"]["len"],
        rw + "overlong_buffer_cfg.penalty_factor": hp["overlong_buffer"]["penalty_factor"],
        rw + "max_resp_len": hp["max_response_length"],
        # one prompt limit in verl serves training and validation: the evaluation's; the training file was cut at
        # Table 5's training limit before (test_training_prompts_over_the_limit_are_left_out)
        "data.max_prompt_length": hp["eval_sampling"]["max_prompt_length"],
        "data.max_response_length": hp["max_response_length"],
        r + "multi_turn.max_assistant_turns": hp["max_turns"],
        r + "temperature": hp["train_sampling"]["temperature"],
        r + "top_p": hp["train_sampling"]["top_p"],
        r + "val_kwargs.temperature": hp["eval_sampling"]["temperature"],
        r + "val_kwargs.top_p": hp["eval_sampling"]["top_p"],
        r + "val_kwargs.do_sample": True,
        "trainer.nnodes": 1, "trainer.n_gpus_per_node": 4,  # "one node, 4x H100 or 4x H200"
        # rollout importance sampling and rejection off, old log-probs recomputed by the actor (harness.verl)
        "algorithm.rollout_correction.rollout_is": None,
        "algorithm.rollout_correction.rollout_rs": None,
        "algorithm.rollout_correction.bypass_mode": False,
        "trainer.resume_mode": "auto",
        # validation before training and every 10 steps (the authors' scripts: test_freq=10), 3 checkpoints kept
        "trainer.val_before_train": True, "trainer.test_freq": 10, "trainer.max_actor_ckpt_to_keep": 3,
        "actor_rollout_ref.model.override_config.attn_implementation": "flash_attention_2",
        r + "agent.num_workers": 8,
        "trainer.default_local_dir": str(t.run_dir / "verl" / "checkpoints"),
        "trainer.experiment_name": t.run_dir.name,
        r + "agent.default_agent_loop": verl_plugin.AGENT_NAME,
        r + "agent.agent_loop_config_path": str(t.job / harness_verl.AGENT_LOOP_FILE),
    }
    assert {k: t[k] for k in expected} == expected
    if model == "qwen3_4b":  # the steps Table 1 reports for CLEANER-4B
        table1 = yaml.safe_load(PAPER.read_text())["table1_4b"]
        assert t["trainer.total_training_steps"] == table1["rows"]["CLEANER-4B"][table1["columns"].index("rl_steps")]
    assert "fp16" in hp["precision"] and t[r + "dtype"] == "float16"  # "fp16 for actor and rollout"
    assert t[a + "fsdp_config.mixed_precision.param_dtype"] == "fp16"
    # "tool: ... 4 s per execution, tool response truncated to 256 chars (middle)"
    assert (t[r + "multi_turn.max_tool_response_length"], t[r + "multi_turn.tool_response_truncate_side"]) == (
        256, "middle")
    agent = t.agent
    assert (agent["name"], agent["_target_"]) == (verl_plugin.AGENT_NAME, verl_plugin.AGENT_LOOP_TARGET)
    assert (agent["rollout"]["max_turns"], agent["rollout"]["max_tool_response_chars"],
            agent["rollout"]["max_response_tokens"], agent["sandbox"]["timeout_s"]) == (
        hp["max_turns"], 256, hp["max_response_length"], 4.0)
    saar = agent["rollout"]["saar"]
    assert (saar["enabled"], saar["gamma"], saar["max_retries"], saar["rollback_probability"]) == (
        True, hp["saar"]["gamma"], hp["saar"]["max_retries_K"], hp["saar"]["rollback_probability"][model])
    assert Path(t[r + "agent.agent_loop_config_path"]).is_absolute() and t.job.is_relative_to(t.run_dir)
    assert (t.job / harness_verl.OVERRIDES_FILE).read_text().splitlines() == t.ovr


def test_every_override_is_a_key_of_verls_config(runs):
    t, base = runs("preset=qwen3_4b"), verl_config([])
    plus = []
    for override in t.ovr:
        key = override.split("=", 1)[0]
        if key.startswith("hydra."):
            continue  # checked by the compose with Hydra's own config
        if key.startswith("+"):
            plus.append(key[1:])
            assert not has_key(base, key[1:]), f"{key}: the key exists, drop the +"
        else:
            assert has_key(base, key), f"{key} is not a key of verl's config"
    assert {next(p for p in PLUS_KEYS if k.startswith(p)) for k in plus} == set(PLUS_KEYS)
    assert len(t.ovr) == len({o.split("=", 1)[0] for o in t.ovr})  # one override per key


def test_the_reward_keys_are_read_by_verls_reward_loader_and_a_top_level_one_is_not(runs, files):
    from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn, load_reward_manager

    t = runs("preset=qwen3_4b")
    path, name = verl_plugin.reward_function()
    fn = get_custom_reward_fn(t.verl)
    assert fn is not None and fn.args[0].__name__ == name and inspect.getfile(fn.args[0]) == path
    assert fn.args[1]["data_sources"] == {"aime24": "math", "gpqa_diamond": "choice", "math_dapo": "math",
                                          "train-code-taco-easy": "code"}  # every data_source gets its grader
    manager = load_reward_manager(t.verl, tokenizer=None)
    ours = manager.compute_score.args  # verl loads the file anew for each loader: the same function, a new object
    assert type(manager) is DAPORewardManager and (ours[0].__name__, inspect.getfile(ours[0]), ours[1]) == (
        name, path, fn.args[1])
    assert (manager.overlong_buffer_cfg.enable, manager.overlong_buffer_cfg.len, manager.max_resp_len) == (
        True, 4096, 20480)
    # the same settings at the places older verl read them: silently ignored by 0.9.1's main_ppo path
    legacy = [o for o in t.ovr if not o.startswith(("reward.custom_reward_function", "+reward.reward_kwargs"))]
    legacy += [f"custom_reward_function.path={path}", f"custom_reward_function.name={name}",
               "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=true",
               "+reward_model.reward_kwargs.overlong_buffer_cfg.len=4096",
               "+reward_model.reward_kwargs.max_resp_len=20480"]
    ignored = verl_config(legacy)
    assert ignored.custom_reward_function.path == path and get_custom_reward_fn(ignored) is None
    assert load_reward_manager(ignored, tokenizer=None).overlong_buffer_cfg is None


def test_verl_builds_and_validates_its_configs_from_ours(runs):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.torch_dtypes import PrecisionType
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    t = runs("preset=qwen3_4b")
    assert not need_reference_policy(t.verl) and not need_critic(t.verl)  # GRPO, no KL: actor and rollout only
    validate_config(t.verl, use_reference_policy=False, use_critic=False)
    actor = omega_conf_to_dataclass(t.verl.actor_rollout_ref.actor)
    assert (actor.strategy, actor.optim.clip_grad, actor.optim.lr_warmup_steps) == ("fsdp2", 1.0, 20)
    assert PrecisionType.to_dtype(actor.fsdp_config.mixed_precision["param_dtype"]) == torch.float16
    # where verl 0.9.1's FSDP engine takes the training dtype and the clip norm from (a source fact this relies on)
    assert "self.engine_config.mixed_precision" in inspect.getsource(FSDPEngine._build_fsdp_module)
    assert "self.optimizer_config.clip_grad" in inspect.getsource(FSDPEngine.optimizer_step)
    rollout = omega_conf_to_dataclass(t.verl.actor_rollout_ref.rollout)
    assert (rollout.name, rollout.n, rollout.val_kwargs.top_p, rollout.agent.agent_loop_config_path) == (
        "sglang", 16, 0.6, str(t.job / harness_verl.AGENT_LOOP_FILE))
    entries = OmegaConf.load(rollout.agent.agent_loop_config_path)  # as verl's AgentLoopWorker loads it
    assert [e.name for e in entries] == [verl_plugin.AGENT_NAME]


def test_rollout_correction_as_configured_changes_nothing_it_trains_on(runs):
    from verl import DataProto
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch

    t = runs("preset=qwen3_4b")
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = DataProto.from_dict({"old_log_probs": torch.full((2, 4), -0.5), "response_mask": mask,
                                 "rollout_log_probs": torch.tensor([[-3.0, -0.5, -0.5, 0], [-0.5, -4.0, 0, 0]])})
    out, metrics = compute_rollout_correction_and_add_to_batch(batch, t.verl.algorithm.rollout_correction)
    assert torch.equal(out.batch["response_mask"], mask) and "rollout_is_weights" not in out.batch
    assert metrics  # the rollout/actor gap is still logged


def test_the_baseline_is_the_same_verl_run_with_saar_off(runs):
    cleaner, baseline = runs("preset=qwen3_4b"), runs("preset=qwen3_4b", "saar=baseline")
    assert cleaner.run_dir != baseline.run_dir
    assert [o.replace(baseline.run_dir.name, "HASH") for o in baseline.ovr] == [
        o.replace(cleaner.run_dir.name, "HASH") for o in cleaner.ovr]
    assert (cleaner.agent["rollout"]["saar"]["enabled"], baseline.agent["rollout"]["saar"]["enabled"]) == (True, False)
    strip = lambda a: {**a, "rollout": {**a["rollout"], "saar": None}}
    assert strip(baseline.agent) == strip(cleaner.agent)


@pytest.mark.parametrize("saar", [True, False])
def test_evaluation_at_test_time_loads_the_last_checkpoint_with_saar_as_asked(runs, hp, saar):
    t = runs("preset=qwen3_4b", "saar=baseline", f"test_time_saar={str(saar).lower()}")
    trained = runs("preset=qwen3_4b", "saar=baseline")
    assert t.run_dir == trained.run_dir and t.job == t.run_dir / ("eval_saar_on" if saar else "eval_saar_off")
    # one switch: a baseline evaluated with SAAR on runs SAAR with the paper's parameters
    assert t.agent["rollout"]["saar"]["enabled"] is saar and t.agent["rollout"]["saar"]["gamma"] == hp["saar"]["gamma"]
    assert (t["trainer.val_only"], t["trainer.val_before_train"], t["trainer.resume_mode"]) == (
        True, True, "resume_path")
    assert t["trainer.resume_from_path"] == str(t.run_dir / "verl" / "checkpoints" / "global_step_250")
    assert t["data.max_prompt_length"] == hp["eval_sampling"]["max_prompt_length"]
    assert t["data.max_response_length"] == hp["eval_sampling"]["max_response_length"]
    assert [Path(f).name.split(".")[0] for f in t["data.val_files"]] == ["aime24", "gpqa_diamond"]
    assert t["actor_rollout_ref.rollout.val_kwargs.n"] == 16
    assert t["trainer.experiment_name"] == f"{t.run_dir.name}-{t.job.name.replace('_', '-')}"


def test_saar_from_step_reaches_the_agent_loop_and_not_its_test_time_evaluation(runs):
    """The post-hoc run (`saar.from_step=200`): a run of its own, whose agent loop gets the step to switch at
    (`CleanerAgentLoop` resolves it per verl step); evaluated at test time, SAAR is on from the start. Breakages
    caught: `from_step` dropped from the agent-loop YAML; kept at test time (`agent_loop_entries` without
    `from_step=0`)."""
    post, cleaner = runs("preset=qwen3_4b", "saar.from_step=200"), runs("preset=qwen3_4b")
    assert post.run_dir != cleaner.run_dir
    assert (post.agent["rollout"]["saar"]["from_step"], cleaner.agent["rollout"]["saar"]["from_step"]) == (200, 0)
    on = runs("preset=qwen3_4b", "saar.from_step=200", "test_time_saar=true")
    assert on.run_dir == post.run_dir and on.agent["rollout"]["saar"] == {**post.agent["rollout"]["saar"],
                                                                          "from_step": 0}


def test_translation_refuses_what_verl_cannot_run(files):
    cases = ((["engine=transformers"], "engine.kind='transformers': cluster=verl supports sglang"),
             (["cluster.gpus_per_node=3", "verl.rollout_tp=2"], "cluster.gpus_per_node=3 must"),
             (["algo.steps=0"], "algo.steps=0: cluster=verl trains for at least one step"),
             (["algo.adv_estimator=rloo", "algo.policy_loss=ppo_clip", "model.dtype=bfloat16"], None))
    for overrides, message in cases:
        cfg = run_config(files, "preset=qwen3_4b", *overrides)
        run_dir = Path(cfg.runs_root).resolve() / "refused"
        if message is None:  # supported: rloo, bf16
            ovr, _, _ = harness_verl.prepare_files(cfg, run_dir, None)
            bf16 = "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=bf16"
            assert {"algorithm.adv_estimator=rloo", bf16, "actor_rollout_ref.rollout.dtype=bfloat16"} <= set(ovr)
            continue
        with pytest.raises(schema.ConfigError, match=message):
            harness_verl.prepare_files(cfg, run_dir, None)


@pytest.mark.parametrize("value, text", [
    ("/data/train.parquet", "/data/train.parquet"), ("123456789012", '"123456789012"'), ("12e4", '"12e4"'),
    ("true", '"true"'), ("/a b/c", "/a b/c"), (" x", '" x"'), ("a=b,c", '"a=b,c"'), (2e-6, "2e-06"),
    ([1, "x y", "[z]"], '[1,x y,"[z]"]'), (None, "null"),
    ({"train-math-numinamath1.5_olympiads": "math"}, "{train-math-numinamath1.5_olympiads:math}")])
def test_values_reach_hydra_unchanged(value, text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert harness_verl.hydra_value(value, "k") == text
    assert OverridesParser.create().parse_override(f"k={text}").value() == value
    for bad in ("it's", 'say "x"', "a\\b", "${oc.env:HOME}"):
        with pytest.raises(schema.ConfigError, match="k="):
            harness_verl.hydra_value(bad, "k")


def entry_point(files, tmp_path, *extra):
    args = [sys.executable, "-m", "harness.train", "preset=qwen3_4b", f"data.train_path={files['train']}",
            f"+data.eval_paths.aime24={files['aime24']}", f"runs_root={tmp_path / 'runs'}",
            f"model.path={files['model']}", *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_dry_run_prints_the_verl_command_one_override_per_line(files, tmp_path):
    proc = entry_point(files, tmp_path, "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{shlex.quote(sys.executable)} -m verl.trainer.main_ppo \\"
    assert all(line.startswith("    ") and line.endswith(" \\") for line in lines[1:-1])
    assert lines[-1].startswith("    ") and not lines[-1].endswith("\\")
    [run_dir] = (tmp_path / "runs").iterdir()
    written = (run_dir / "verl" / harness_verl.OVERRIDES_FILE).read_text().splitlines()
    # as the shell reads it: a backslash-newline continues the line
    assert shlex.split(proc.stdout.replace("\\\n", "")) == [sys.executable, "-m", "verl.trainer.main_ppo", *written]
    assert len(lines) == 1 + len(written) and "trainer.resume_mode=auto" in written
    assert {p.name for p in (run_dir / "verl").iterdir()} == {"agent_loop.yaml", "overrides.txt", "data", "rollouts"}
    assert not (run_dir / "summary.json").exists() and not (run_dir / "env.json").exists()  # nothing ran


def test_cluster_verl_without_gpus_exits_2_with_one_clear_line(files, tmp_path):
    proc = entry_point(files, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(
        "error: cluster=verl needs GPUs: cluster.gpus_per_node=4, but this machine has 0 CUDA devices")
    assert "dry_run=true" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_training_prompts_over_the_limit_are_left_out(tok, tmp_path):
    """verl has one prompt limit for training and validation (the evaluation's 4096); the training file is cut at
    Table 5's 2560 before. Counted as the agent loop renders a prompt (ChatML of the messages). Breakage checked:
    `<` for `<=` drops the prompt that is exactly at the limit."""
    from cleaner import chat

    model = tmp_path / "model"
    tok.save_pretrained(model)
    prompts = [[{"role": "user", "content": "x " * n}] for n in (3, 10, 30)]
    sizes = [len(chat.prompt_span(tok, p)) for p in prompts]
    train = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": p, "k": i} for i, p in enumerate(prompts)]), train)
    out, dropped = harness_verl.drop_long_prompts(train, str(model), sizes[1])
    assert dropped == 1 and pq.read_table(out).column("k").to_pylist() == [0, 1]
    assert harness_verl.drop_long_prompts(train, str(model), sizes[1]) == (out, 1)  # reused


@pytest.mark.parametrize("overrides, cpus, expected", [
    ((), 64, 8), ((), 256, 16), ((), 4, 1), (("verl.agent_workers=4",), 64, 16),
    (("verl.max_sandbox_workers=4",), 64, 4), (("sandbox.workers=3",), 256, 3)])
def test_sandbox_workers_are_the_jobs_cpus_shared_by_the_agent_loop_workers(files, overrides, cpus, expected):
    """Each of verl's agent-loop workers runs its own pool: 8 workers x os.cpu_count() would be 512 cells on a
    64-core node. Hand-computed: 64 CPUs / 8 workers = 8; 256 / 8 = 32, capped at 16; 4 / 8 rounds to 0, at least 1."""
    cfg = run_config(files, "preset=qwen3_4b", *overrides)
    assert harness_verl.sandbox_workers(cfg, cpus) == expected


def test_the_agent_loop_yaml_sizes_its_sandbox_from_the_slurm_allocation(files, monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "40")
    t = Translated(files, "preset=qwen3_4b", "seed=7")
    assert t.agent["sandbox"]["workers"] == 5  # 40 CPUs / 8 agent-loop workers
    sandbox = get_reward_kwargs(t)["sandbox"]  # the reward's code tests get the run's sandbox settings
    assert sandbox == {k: v for k, v in t.agent["sandbox"].items() if k != "workers"} and sandbox["timeout_s"] == 4.0


def get_reward_kwargs(t):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    return get_custom_reward_fn(t.verl).args[1]


def test_verl_cpu_is_the_same_translation_on_the_cpu_with_the_lab(tmp_path):
    """cluster=verl_cpu: the lab's tasks as verl parquet, the lab model, the CPU shims in every Ray process, the
    transformers rollout server, and otherwise the GPU recipe's keys."""
    from cleaner.verl_plugin import cpu

    with initialize_config_dir(str(cli.CONF), version_base="1.3"):
        cfg = compose("train", overrides=["cluster=verl_cpu", "algo.steps=3", "algo.prompts_per_step=4",
                                          "algo.eval_problems=5", f"runs_root={tmp_path}", cli.searchpath_override()])
    schema.validate(cfg)
    run_dir = tmp_path / records.config_hash(cfg)
    ovr, job, _ = harness_verl.prepare_files(cfg, run_dir, None)
    v = verl_config(ovr)
    assert (v.trainer.device, v.actor_rollout_ref.rollout.name, v.ray_kwargs.ray_init.num_gpus) == ("cpu", "hf_cpu", 1)
    assert v.actor_rollout_ref.model.path == str((REPO / schema.lab_sft_path()).resolve())
    env = v.ray_kwargs.ray_init.runtime_env.env_vars
    assert {k: env[k] for k in cpu.ENV} == cpu.ENV and env.CLEANER_ROLLOUT_LOG_DIR == str(job / "rollouts" / "1")
    [train], [test] = v.data.train_files, v.data.val_files
    rows = pq.read_table(train).to_pylist()
    assert len(rows) == 12 and pq.read_table(test).num_rows == 5  # 3 steps x 4 prompts; 5 held-out problems
    assert {r["data_source"] for r in rows} == {"lab"} and rows[0]["prompt"][0]["role"] == "system"
    assert get_reward_kwargs(SimpleNamespace(verl=v))["data_sources"] == {"lab": "math"}


def test_each_benchmark_can_have_its_own_sample_count(files):
    """The authors sample LiveCodeBench 10 times and the other benchmarks 16: verl's V1 validation reads a per-row
    `__rollout_n__`. Breakage checked: the override ignored (every row 16)."""
    t = Translated(files, "preset=qwen3_4b", "+data.eval_samples.aime24=10")
    samples = {Path(f).name.split(".")[0]: set(pq.read_table(f).column("__rollout_n__").to_pylist())
               for f in t["data.val_files"]}
    assert samples == {"aime24": {10}, "gpqa_diamond": {16}}
    with pytest.raises(schema.ConfigError, match="data.eval_samples.aime2024=10: must be >= 1 and name a benchmark"):
        run_config(files, "preset=qwen3_4b", "+data.eval_samples.aime2024=10")


def test_saar_metrics_count_a_redone_step_once(tmp_path):
    """Our per-trajectory records summed per step and split; a step that a killed invocation began (1) and the
    resumed one redid (2) counts once, from the redo; counts by kind (failure classes, infrastructure causes) summed
    per kind. Hand-computed. Breakage checked: summing every invocation (step 2 would have 3 trajectories and 2
    splices); dict counters dropped (no `infra_excluded_by_cause/worker_died`)."""
    def write(invocation, *records):
        folder = tmp_path / str(invocation)
        folder.mkdir()
        (folder / "rollouts.7.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def record(step, split, splices, finish="answer"):
        infra = {"worker_died": 1} if finish == "infra_error" else {}
        return {"global_steps": step, "split": split, "finish_reason": finish,
                "saar_stats": {"splices_shallow": splices, "saar_applied": True, "by_class": {"NameError": 1},
                               "infra_excluded_by_cause": infra}}

    write(1, record(1, "train", 1), record(1, "train", 0, "length"), record(2, "train", 1))
    write(2, record(2, "train", 0), record(2, "train", 1, "infra_error"), record(2, "test", 0))
    assert harness_verl.saar_by_step(tmp_path) == [
        {"global_steps": 1, "split": "train", "trajectories": 2, "finish_answer": 1, "finish_length": 1,
         "splices_shallow": 1, "saar_applied": 2, "by_class/NameError": 2},
        {"global_steps": 2, "split": "test", "trajectories": 1, "finish_answer": 1, "splices_shallow": 0,
         "saar_applied": 1, "by_class/NameError": 1},
        {"global_steps": 2, "split": "train", "trajectories": 2, "finish_answer": 1, "finish_infra_error": 1,
         "splices_shallow": 1, "saar_applied": 2, "by_class/NameError": 2, "infra_excluded_by_cause/worker_died": 1}]


def test_a_run_resumed_from_a_validated_step_does_not_validate_it_again(files):
    """verl saves a step's checkpoint, then validates the step: resumed from a checkpoint whose validation verl's
    metrics file holds, the run does not validate before its first step; from one whose validation the kill cut
    off, it does. Checked red: val_before_train always true; false whenever a checkpoint exists."""
    first = Translated(files, "preset=qwen3_4b", "seed=11")
    assert first["trainer.val_before_train"] is True
    checkpoints = first.job / "checkpoints"
    (checkpoints / "global_step_10").mkdir(parents=True)
    (checkpoints / harness_verl.LATEST).write_text("10")
    lines = [{"step": 10, "data": {"actor/pg_loss": 0.1}}]  # the step trained and saved, not yet validated
    (first.job / harness_verl.METRICS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert Translated(files, "preset=qwen3_4b", "seed=11")["trainer.val_before_train"] is True
    lines.append({"step": 10, "data": {"val-core/aime24/acc/mean@16": 0.3}})
    (first.job / "metrics.1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 11, "da')
    assert Translated(files, "preset=qwen3_4b", "seed=11")["trainer.val_before_train"] is False


@pytest.mark.parametrize("steps, latest, keep, removed", [
    ([10, 20, 30, 40, 50], "50", 3, [10, 20]),
    ([10, 20, 30], "30", 3, []),
    ([10, 20, 30, 40], "20", 1, [10, 30]),  # the newest by number is kept, and the one verl will resume from
    ([10, 20, 30], "30", 0, []),  # 0: verl keeps every checkpoint
    ([20, 100, 30], "100", 2, [20]),  # by number, not by name
])
def test_checkpoints_beyond_keep_are_pruned_before_an_invocation(tmp_path, steps, latest, keep, removed):
    """verl forgets the checkpoints of an earlier invocation, so each resubmission would add up to `keep` more
    (about 145 GB for 4B at 3). Hand-computed: which global_step folders go. Checked red: pruning by name order
    (global_step_100 before global_step_20) and deleting the one latest_checkpointed_iteration.txt names."""
    for n in steps:
        (tmp_path / f"global_step_{n}" / "actor").mkdir(parents=True)
    (tmp_path / harness_verl.LATEST).write_text(latest)
    gone = harness_verl.prune_checkpoints(tmp_path, keep)
    assert gone == [tmp_path / f"global_step_{n}" for n in removed]
    assert sorted(int(p.name.split("_")[-1]) for p in tmp_path.glob("global_step_*")) == sorted(
        n for n in steps if n not in removed)
