"""Fixtures for the verl plugin: the lab's tiny model and tokenizer saved as a Hugging Face folder, verl's own default
trainer config pointed at it, verl's `AgentLoopWorker` built from that config with our agent-loop YAML, fake server
managers (scripted outputs, or the tiny model sampling), and a verl batch of prompts."""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
import verl
import yaml
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
from verl.protocol import DataProto
from verl.workers.rollout.replica import TokenOutput

from cleaner.lab.model import tiny_qwen3
from cleaner.rollout.engines import GenRequest, SamplingParams, TransformersEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.sandbox import SandboxConfig
from cleaner.verl_plugin import AGENT_NAME, agent_loop_config
from cleaner.verl_plugin.agent_loop import close_sandbox_pools

SANDBOX = SandboxConfig(timeout_s=5.0, workers=1)


@pytest.fixture(scope="session")
def tiny_model(tok):
    torch.set_num_threads(1)
    return tiny_qwen3(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)


@pytest.fixture(scope="session")
def model_dir(tok, tiny_model, tmp_path_factory):
    """The lab tokenizer and tiny model as a Hugging Face folder, for verl's HFModelConfig."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def verl_config(model_dir, agent_yaml, prompt_length: int, response_length: int):
    """verl's generated default PPO config (what `python -m verl.trainer.main_ppo` composes), with our model,
    lengths and agent-loop YAML."""
    cfg = OmegaConf.load(os.path.join(os.path.dirname(verl.__file__), "trainer/config/_generated_ppo_trainer.yaml"))
    for key, value in {"actor_rollout_ref.model.path": str(model_dir),
                       "actor_rollout_ref.rollout.name": "sglang",
                       "actor_rollout_ref.rollout.prompt_length": prompt_length,
                       "actor_rollout_ref.rollout.response_length": response_length,
                       "actor_rollout_ref.rollout.agent.agent_loop_config_path": str(agent_yaml)}.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture
def make_worker(model_dir, tmp_path):
    """make_worker(server, saar=True, rollout=RolloutConfig(), prompt_length=64, response_length=256,
    sandbox=SANDBOX) -> verl's AgentLoopWorker, loading the YAML that `agent_loop_config` gives (SAAR switched by
    `saar`), with `server` as its LLM client."""
    counter = itertools.count()

    def make(server, saar: bool = True, rollout: RolloutConfig | None = None, prompt_length: int = 64,
             response_length: int = 256, sandbox: SandboxConfig = SANDBOX) -> AgentLoopWorker:
        agent_yaml = tmp_path / f"agent_loop_{next(counter)}.yaml"
        rollout = rollout or RolloutConfig()
        rollout = replace(rollout, saar=replace(rollout.saar, enabled=saar))
        agent_yaml.write_text(yaml.safe_dump(agent_loop_config(rollout, sandbox)))
        return AgentLoopWorker(verl_config(model_dir, agent_yaml, prompt_length, response_length), llm_client=server)

    return make


def verl_batch(questions: list[str], repeat: int = 1, data_source: str = "aime24",
               golds: list[str] | None = None) -> DataProto:
    """A batch as verl's trainer hands it to the agent-loop workers: one row per sample, `repeat` samples per
    question (interleaved, as `DataProto.repeat(interleave=True)`), routed to our agent loop."""
    rows = [(i, q) for i, q in enumerate(questions) for _ in range(repeat)]
    n = len(rows)
    raw_prompt = np.empty(n, dtype=object)
    reward_model = np.empty(n, dtype=object)
    for k, (i, q) in enumerate(rows):
        raw_prompt[k] = [{"role": "user", "content": q}]
        reward_model[k] = {"ground_truth": (golds or [""] * len(questions))[i], "style": "rule"}
    return DataProto(
        batch=TensorDict({"dummy_tensor": torch.zeros(n, 1, dtype=torch.uint8)}, batch_size=n),
        non_tensor_batch={"raw_prompt": raw_prompt, "agent_name": np.array([AGENT_NAME] * n, dtype=object),
                          "index": np.array([i for i, _ in rows]), "data_source": np.array([data_source] * n,
                                                                                           dtype=object),
                          "reward_model": reward_model},
        meta_info={"validate": False, "global_steps": 1})


@pytest.fixture
def batch():
    return verl_batch


def weights_fields(version: int) -> dict[str, int]:
    """The `extra_fields` verl's `LLMServerClient.generate` returns: the server's weights version, and
    min/max_global_steps set from it."""
    return {"global_steps": version, "min_global_steps": version, "max_global_steps": version}


class ScriptedServer:
    """verl's server-manager interface with fixed outputs: each request pops the next text scripted for the
    question its prompt holds, encodes it, appends `<|im_end|>` and cuts it to `max_tokens` (as a server would).
    Log-probs are distinct (-0.001, -0.002, ...) so any misalignment shows. Each output carries the weights
    version `weights_version` as verl's server client reports it. Records requests and outputs."""

    def __init__(self, tok, scripts: dict[str, list[str]]):
        self.tok = tok
        self.scripts = {q: list(texts) for q, texts in scripts.items()}
        self.requests: list[dict[str, Any]] = []
        self.outputs: list[TokenOutput] = []
        self.weights_version = 0
        self._lp = itertools.count(1)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.requests.append({"request_id": request_id, "prompt_ids": list(prompt_ids),
                              "sampling_params": dict(sampling_params), **kwargs})
        text = self.tok.decode(prompt_ids)
        [question] = [q for q in self.scripts if q in text]
        ids = self.tok.encode(self.scripts[question].pop(0), add_special_tokens=False)
        ids = (ids + [self.tok.convert_tokens_to_ids("<|im_end|>")])[: sampling_params["max_tokens"]]
        self.outputs.append(TokenOutput(token_ids=ids, log_probs=[-next(self._lp) / 1000 for _ in ids],
                                        extra_fields=weights_fields(self.weights_version)))
        return self.outputs[-1]


@pytest.fixture
def scripted(tok):
    return lambda scripts: ScriptedServer(tok, scripts)


class ModelServer:
    """verl's server-manager interface backed by the lab's tiny model: samples with verl's sampling params
    (temperature, top_p, top_k; -1 means no top-k) up to `max_tokens`, stopping at `<|im_end|>`. Seeds come from a
    counter, so a run is reproducible. Records requests and outputs."""

    def __init__(self, tok, model):
        self.engine = TransformersEngine(model, tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id)
        self.requests: list[dict[str, Any]] = []
        self.outputs: list[TokenOutput] = []
        self._seed = itertools.count()

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        self.requests.append({"request_id": request_id, "prompt_ids": list(prompt_ids),
                              "sampling_params": dict(sampling_params)})
        sampling = SamplingParams(sampling_params["temperature"], sampling_params["top_p"],
                                  max(0, sampling_params["top_k"]))
        request = GenRequest(request_id, tuple(prompt_ids), sampling_params["max_tokens"], next(self._seed))
        [out] = await asyncio.to_thread(self.engine.generate, [request], sampling)
        self.outputs.append(TokenOutput(token_ids=list(out.ids), log_probs=list(out.logprobs),
                                        extra_fields=weights_fields(0)))
        return self.outputs[-1]


@pytest.fixture
def model_server(tok, tiny_model):
    return ModelServer(tok, tiny_model)


@pytest_asyncio.fixture
async def sandbox_pools():
    """Closes the sandbox pools the agent loop started in the test's event loop."""
    yield
    await close_sandbox_pools()
