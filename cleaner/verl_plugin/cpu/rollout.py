"""A transformers rollout server for verl 0.9.1 on the CPU, standing where SGLang stands on GPUs.

verl has no CPU rollout backend: its registries (`workers/rollout/replica.py`, `workers/rollout/base.py`) hold
vllm, sglang and trtllm, all of them GPU servers. This adds `hf_cpu` to both, in the shape of verl's SGLang
backend:

    TransformersServer   a Ray actor per replica: token ids in, sampled ids and log-probs out (the lab's
                         `TransformersEngine`, requests batched as they arrive), `prompt_logprobs` for re-scoring,
                         weights replaced by the trainer after each step, the weights' version (global step)
                         reported with every output, as verl's SGLang server does, and their digest
    TransformersReplica  verl's `RolloutReplica`: starts one server per replica (hybrid mode: the trainer's workers
                         hold the weights; the server holds a copy)
    ServerAdapter        verl's `BaseRollout` in each trainer worker: forwards the actor's weights to its replica's
                         server and sets the version; sleep / wake-up have nothing to free on the CPU

What it does not model: SGLang's radix cache and its scheduling, GPU memory, tensor parallelism (one process per
replica), speculative decoding, LoRA adapters, multimodal inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Generator

import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from cleaner.rollout.engines import GenOutput, GenRequest, SamplingParams, TransformersEngine
from cleaner.rollout.recompute import score
from cleaner.verl_plugin.cpu import ROLLOUT_NAME as NAME


def server_name(replica_rank: int, suffix: str = "") -> str:
    """The Ray actor name of a replica's server (the adapter in each trainer worker finds it by name)."""
    return f"hf_cpu_server_{replica_rank}{suffix}"


@dataclass
class _Pending:
    request: GenRequest
    sampling: SamplingParams
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class TransformersServer:
    """One replica's rollout server (a Ray actor). `generate` follows verl's SGLang server: `max_tokens` (or
    `max_new_tokens`) capped to the context left, `stop_token_ids` plus the model's eos end a generation and are
    kept in it, `logprobs` asks for the sampled tokens' log-probs (at the sampling temperature, as the lab engine
    reports them), and `prompt_logprobs=0` returns the log-prob of every prompt token after the first in
    `extra_fields["prompt_logprobs"]` (one row per position, a dummy last row: verl's layout). Requests that arrive
    while a batch runs form the next batch."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, replica_rank: int, seed: int):
        torch.set_num_threads(int(os.environ.get("CLEANER_ROLLOUT_THREADS", "1")))
        self.config = omega_conf_to_dataclass(config)
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        path = model_config.local_path
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        eos = self.model.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        self.engine = TransformersEngine(self.model, eos if eos is not None else tokenizer.eos_token_id,
                                         tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.max_model_len = int(self.config.max_model_len or self.model.config.max_position_embeddings)
        self.global_steps: int | None = None
        self.weights_digest = self._digest()
        self._seeds = itertools.count(seed * 1_000_003 + replica_rank * 10_007)
        self._queue: list[_Pending] = []
        self._worker: asyncio.Task | None = None

    async def launch_server(self, master_address: str | None = None, master_port: int | None = None) -> None:
        pass

    async def generate(self, prompt_ids: Any, sampling_params: dict[str, Any], request_id: str,
                       image_data: Any = None, video_data: Any = None, **kwargs: Any) -> TokenOutput:
        if image_data or video_data:
            raise ValueError(f"{NAME}: multimodal inputs are not supported")
        params = dict(sampling_params)
        prompt = tuple(int(t) for t in prompt_ids)
        room = self.max_model_len - len(prompt) - 1
        if room < 0:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds the model's context of {self.max_model_len}")
        default = min(self.config.response_length, self.config.prompt_length + self.config.response_length - len(prompt))
        max_new = params.pop("max_new_tokens", params.pop("max_tokens", default))
        max_new = max(0, min(int(max_new), room))
        temperature = float(params.get("temperature", 1.0))
        top_k = int(params.get("top_k", -1))
        sampling = SamplingParams(temperature, float(params.get("top_p", 1.0)), max(0, top_k))
        extra: dict[str, Any] = {"global_steps": self.global_steps, "weights_digest": self.weights_digest}
        prompt_logprobs = params.get("prompt_logprobs")
        if prompt_logprobs is not None:
            if prompt_logprobs != 0:
                raise ValueError(f"{NAME}: prompt_logprobs supports 0 (the prompt's own tokens), got {prompt_logprobs}")
            lps = await asyncio.to_thread(self._score, prompt, temperature or 1.0)
            extra["prompt_ids"] = [[t] for t in prompt[1:]] + [[0]]
            extra["prompt_logprobs"] = [[lp] for lp in lps] + [[0.0]]
        ids: tuple[int, ...] = ()
        logprobs: tuple[float, ...] = ()
        if max_new > 0:
            stop = frozenset(int(t) for t in params.get("stop_token_ids") or [])
            out = await self._submit(GenRequest(request_id, prompt, max_new, next(self._seeds), stop), sampling)
            ids, logprobs = out.ids, out.logprobs
        finished = bool(ids) and (ids[-1] == self.engine.eos_id or ids[-1] in (params.get("stop_token_ids") or []))
        return TokenOutput(token_ids=list(ids), log_probs=list(logprobs) if params.get("logprobs") else None,
                           stop_reason="completed", num_preempted=0,
                           extra_fields={**extra, "finish_reason": "stop" if finished else "length"})

    def _score(self, prompt: tuple[int, ...], temperature: float) -> list[float]:
        with self.engine._lock:
            return score(self.model, prompt[:1], prompt[1:], temperature)

    async def _submit(self, request: GenRequest, sampling: SamplingParams) -> GenOutput:
        pending = _Pending(request, sampling)
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await pending.done

    async def _drain(self) -> None:
        """Run queued requests in batches of equal sampling settings until the queue is empty."""
        while self._queue:
            sampling = self._queue[0].sampling
            batch = [p for p in self._queue if p.sampling == sampling]
            self._queue = [p for p in self._queue if p.sampling != sampling]
            try:
                outs = await asyncio.to_thread(self.engine.generate, [p.request for p in batch], sampling)
            except Exception as e:  # the callers get the error; the next batch still runs
                for p in batch:
                    p.done.set_exception(e)
                continue
            for p, out in zip(batch, outs):
                p.done.set_result(out)

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None) -> None:
        """Load the actor's full weights (names as in the Hugging Face model), then set their version."""
        with self.engine._lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ValueError(f"{NAME}: weight update does not match the model: missing {sorted(set(missing) - tied)}, "
                             f"unexpected {sorted(unexpected)}")
        self.weights_digest = self._digest()
        if global_steps is not None:
            self.global_steps = global_steps

    def _digest(self) -> str:
        """A fingerprint of the weights (sha256 of their bytes), reported with every output: it shows that an
        update arrived and changed them, which the version number alone does not."""
        digest = hashlib.sha256()
        with torch.no_grad():
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    def get_server_address(self) -> tuple[str, int]:
        return "127.0.0.1", 0

    async def _noop(self, *args: Any, **kwargs: Any) -> None:
        return None

    wake_up = sleep = clear_kv_cache = release_kv_cache = resume_kv_cache = _noop
    abort_all_requests = resume_generation = start_profile = stop_profile = _noop


class TransformersReplica(RolloutReplica):
    """verl's replica interface for `TransformersServer`: one server actor per replica, no GPU of its own."""

    async def launch_servers(self) -> None:
        name = server_name(self.replica_rank, self.name_suffix)
        server = ray.remote(TransformersServer).options(name=name, num_cpus=0,
                                                        max_concurrency=self.max_concurrency)
        seed = int(getattr(self.config, "seed", 0) or 0)
        self.servers = [server.remote(self.config, self.model_config, self.replica_rank, seed)]
        await self.servers[0].launch_server.remote()
        self._server_handle = self.servers[0]
        self._server_address = name  # the load balancer's key; there is no HTTP endpoint

    def rollout_worker_use_gpu(self) -> bool:
        return False


class ServerAdapter(BaseRollout):
    """verl's rollout interface in each trainer worker: after a training step the actor's weights arrive here
    (`update_weights`, called by every rank, since gathering them is collective); the first rank of each replica
    sends them to its server."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, device_mesh: Any, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.leader = rank % world == 0

    async def update_weights(self, weights: Generator[tuple[str, torch.Tensor], None, None],
                             global_steps: int | None = None, wire_format: str = "named_tensors", **kwargs: Any):
        if wire_format != "named_tensors" or kwargs.get("peft_config"):
            raise ValueError(f"{NAME}: only full weight updates (named_tensors, no LoRA) are supported")
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}  # every rank iterates
        if self.leader:
            await ray.get_actor(server_name(self.replica_rank)).update_weights.remote(state, global_steps)

    async def resume(self, tags: list[str]) -> None:
        pass

    async def release(self) -> None:
        pass
