"""Generation engines: token ids in, sampled token ids and their log-probs out.

Every engine offers `generate(requests, sampling)`: a batch, for the driver (`cleaner.rollout.drivers`). Sampling
is seeded per request (`GenRequest.seed`), so a trajectory samples the same tokens whether it runs alone or in a
batch, up to floating-point differences that padding introduces (last-digit changes of the logits; a sampled
token flips only when they cross a sampling boundary).

Log-probs are those of the temperature-scaled distribution before top-p / top-k filtering, the quantity the
trainer recomputes (logits divided by the temperature, as verl does).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import torch
from transformers import DynamicCache

from cleaner import chat, seeds
from cleaner.rollout.recompute import score


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class GenRequest:
    request_id: str  # the trajectory id: one per trajectory, so a server can route it to the same cache
    context: tuple[int, ...]
    max_new_tokens: int
    seed: int
    stop_ids: frozenset[int] = frozenset()  # tokens that end the generation besides the engine's eos (kept in it)


@dataclass(frozen=True)
class GenOutput:
    ids: tuple[int, ...]
    logprobs: tuple[float, ...]


class Engine(Protocol):
    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]: ...


def sample_token(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> tuple[int, float]:
    """Sample one token from a row of logits `[vocab]`; returns (token, its log-prob at the sampling temperature)."""
    if sampling.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logits))
        return token, float(logp[token])
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    probs = logp.exp()
    if sampling.top_k:
        kth = torch.topk(probs, min(sampling.top_k, probs.numel())).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if sampling.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_probs, dim=-1) / sorted_probs.sum()
        keep = cum - sorted_probs / sorted_probs.sum() < sampling.top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
    token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
    return token, float(logp[token])


class TransformersEngine:
    """Local generation with a transformers causal LM: left padding, one KV cache per batch, per-request seeds.
    Each call prefills the whole context (no cache is kept across turns)."""

    def __init__(self, model: Any, eos_id: int, pad_id: int):
        self.model = model
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._lock = threading.Lock()  # one forward at a time (verl's CPU rollout server scores from another thread)

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        with self._lock:
            return self._generate(requests, sampling)

    def _generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        width = max(len(r.context) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, r in enumerate(requests):
            ids[row, width - len(r.context):] = torch.tensor(r.context)
            mask[row, width - len(r.context):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = next(self.model.parameters()).device  # the forward passes run there; sampling on the host, with
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)  # the requests' CPU generators
        cache = DynamicCache()
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1].float().cpu()
        generators = [torch.Generator().manual_seed(r.seed) for r in requests]
        out_ids: list[list[int]] = [[] for _ in requests]
        out_lps: list[list[float]] = [[] for _ in requests]
        active = [r.max_new_tokens > 0 for r in requests]
        next_pos = positions[:, -1:] + 1
        while any(active):
            tokens = torch.full((len(requests), 1), self.pad_id, dtype=torch.long)
            for row, r in enumerate(requests):
                if not active[row]:
                    continue
                token, lp = sample_token(logits[row], sampling, generators[row])
                out_ids[row].append(token)
                out_lps[row].append(lp)
                tokens[row, 0] = token
                active[row] = token != self.eos_id and token not in r.stop_ids and len(out_ids[row]) < r.max_new_tokens
            if not any(active):
                break
            mask = torch.cat([mask, torch.ones((len(requests), 1), dtype=torch.long, device=device)], dim=1)
            logits = self.model(input_ids=tokens.to(device), attention_mask=mask, position_ids=next_pos,
                                past_key_values=cache, use_cache=True).logits[:, -1].float().cpu()
            next_pos = next_pos + 1
        return [GenOutput(tuple(i), tuple(lp)) for i, lp in zip(out_ids, out_lps)]


class ScriptedEngine:
    """Fixed outputs per trajectory, to test the state machine alone. Each request pops the next text scripted for
    its trajectory, encodes it and appends the stop token; an output longer than `max_new_tokens` is cut there
    without the stop token, as a real engine would cut it. Log-probs are distinct (-0.001, -0.002, ...)."""

    def __init__(self, tokenizer: Any, scripts: dict[str, list[str]], eos_token: str = "<|im_end|>"):
        self.tokenizer = tokenizer
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.eos_id = tokenizer.convert_tokens_to_ids(eos_token)
        self.requests: list[GenRequest] = []
        self.outputs: list[GenOutput] = []
        self._lp = itertools.count(1)

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        return [self._one(r) for r in requests]

    def _one(self, request: GenRequest) -> GenOutput:
        self.requests.append(request)
        text = self.scripts[request.request_id].pop(0)
        ids = tuple((self.tokenizer.encode(text, add_special_tokens=False) + [self.eos_id])[: request.max_new_tokens])
        self.outputs.append(GenOutput(ids, self._logprobs(request, ids)))
        return self.outputs[-1]

    def _logprobs(self, request: GenRequest, ids: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(-next(self._lp) / 1000 for _ in ids)


class ForcedEngine(ScriptedEngine):
    """Scripted outputs carrying the log-probs `model` gives them in each request's context, as if it had sampled
    them: real log-probs for chosen tool-use paths (errors, fixes) that a small random model would never sample."""

    def __init__(self, model: Any, tokenizer: Any, scripts: dict[str, list[str]], temperature: float = 1.0):
        super().__init__(tokenizer, scripts)
        self.model = model
        self.temperature = temperature

    def _logprobs(self, request: GenRequest, ids: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(score(self.model, request.context, ids, self.temperature))


class SGLangEngine:
    """Client of SGLang servers' native `/generate` endpoint, tokens in and tokens out; it needs no `import sglang`.

    Each request carries the exact token ids of the context, so the server's radix cache reuses every prefix it has
    seen (the prompt across the G samples, the history across turns). A trajectory always goes to the same server
    (chosen by a stable hash of its id), so its prefix is cached where its next turn lands. Requests ask for the
    log-prob of each sampled token (`return_logprob`) and pass the per-generation seed (`sampling_seed`).
    """

    def __init__(self, urls: list[str], stop_token_ids: list[int], timeout_s: float = 600.0):
        if not urls:
            raise ValueError("SGLangEngine needs at least one server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.stop_token_ids = stop_token_ids
        self.timeout_s = timeout_s
        self._clients: dict[int, httpx.AsyncClient] = {}

    def server_for(self, request_id: str) -> str:
        return self.urls[seeds.derive(request_id) % len(self.urls)]

    def payload(self, request: GenRequest, sampling: SamplingParams) -> dict[str, Any]:
        return {
            "rid": f"{request.request_id}#{request.seed:x}",  # unique per generation; SGLang refuses duplicates
            "input_ids": list(request.context),
            "sampling_params": {
                "max_new_tokens": request.max_new_tokens,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": sampling.top_k or -1,
                "stop_token_ids": self.stop_token_ids,
                "sampling_seed": request.seed,
                "skip_special_tokens": False,
                "no_stop_trim": True,  # keep the stop token: it is part of the sampled turn
            },
            "return_logprob": True,
        }

    async def agenerate(self, request: GenRequest, sampling: SamplingParams,
                        client: httpx.AsyncClient | None = None) -> GenOutput:
        url = self.server_for(request.request_id)
        response = await (client or self._client()).post(f"{url}/generate", json=self.payload(request, sampling))
        response.raise_for_status()
        body = response.json()
        ids = [int(i) for i in body["output_ids"]]
        logprobs = [float(lp) for lp, _, _ in body["meta_info"]["output_token_logprobs"]]
        if len(logprobs) != len(ids):
            raise RuntimeError(f"SGLang at {url} returned {len(ids)} tokens but {len(logprobs)} log-probs for "
                               f"request {request.request_id}")
        return GenOutput(tuple(ids), tuple(logprobs))

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        """A batch, its requests sent at once (the servers batch them), on an event loop and client of its own that
        end with it (the driver calls this from a worker thread)."""
        async def all_of_them() -> list[GenOutput]:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                return list(await asyncio.gather(*(self.agenerate(r, sampling, client) for r in requests)))

        return asyncio.run(all_of_them())

    def rescore_payload(self, request_id: str, ids: tuple[int, ...], start: int) -> dict[str, Any]:
        return {"rid": f"{request_id}#rescore", "input_ids": list(ids), "sampling_params": {"max_new_tokens": 0},
                "return_logprob": True, "logprob_start_len": start}

    async def arescore(self, request_id: str, ids: tuple[int, ...], start: int) -> list[float]:
        """Log-probs of `ids[start:]`, each given the tokens before it, under the served weights: a prefill with no
        new token. SGLang reuses its radix cache only up to `logprob_start_len`, so this costs a prefill of
        `len(ids) - start` tokens when the prefix is cached (it is on the trajectory's own server, which is the one
        asked); a re-score from the start of the response would prefill the whole response."""
        url = self.server_for(request_id)
        response = await self._client().post(f"{url}/generate", json=self.rescore_payload(request_id, ids, start))
        response.raise_for_status()
        entries = response.json()["meta_info"]["input_token_logprobs"]
        if len(entries) != len(ids) - start:
            raise RuntimeError(f"SGLang at {url} returned {len(entries)} input log-probs for {len(ids) - start} "
                               f"tokens of request {request_id}")
        return [float(lp) for lp, _, _ in entries]

    def _client(self) -> httpx.AsyncClient:
        loop = id(asyncio.get_running_loop())  # a client belongs to the event loop it was made in
        if loop not in self._clients:
            self._clients[loop] = httpx.AsyncClient(timeout=self.timeout_s)
        return self._clients[loop]


def transformers_engine(model: Any, tokenizer: Any) -> TransformersEngine:
    """The in-process engine for `model`, stopping at the chat template's end of turn."""
    return TransformersEngine(model, tokenizer.convert_tokens_to_ids(chat.IM_END), tokenizer.pad_token_id)


def sglang_engine(urls: list[str], tokenizer: Any) -> SGLangEngine:
    """The client of SGLang servers at `urls`, stopping at the chat template's end of turn."""
    return SGLangEngine(urls, [tokenizer.convert_tokens_to_ids(chat.IM_END)])
