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
from transformers.cache_utils import Cache, DynamicLayer

from cleaner import chat, seeds
from cleaner.rollout.recompute import length_chunks, score


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


def sample_rows(logits: torch.Tensor, sampling: SamplingParams,
                generators: list[torch.Generator]) -> tuple[list[int], list[float]]:
    """`sample_token` on each row of logits `[B, vocab]`, row b with `generators[b]`: the same tokens and log-probs,
    with the softmax of all rows in one operation (row by row the same arithmetic) and only the draw per row.
    Top-k / top-p filtering goes row by row through `sample_token`."""
    if sampling.top_k or sampling.top_p < 1:
        pairs = [sample_token(row, sampling, g) for row, g in zip(logits, generators)]
        return [t for t, _ in pairs], [lp for _, lp in pairs]
    if sampling.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = torch.argmax(logits, dim=-1)
    else:
        logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
        probs = logp.exp()
        tokens = torch.cat([torch.multinomial(p / p.sum(), 1, generator=g) for p, g in zip(probs, generators)])
    return tokens.tolist(), logp.gather(-1, tokens[:, None]).squeeze(-1).tolist()


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in buffers sized once for the whole generation, `[B, heads, capacity, head_dim]`:
    a step writes its column in place, where `DynamicLayer` concatenates (a copy of the whole cache per step).
    `keys` / `values` are views of the filled part. `prefix_keys` / `prefix_values` `[B, heads, n, head_dim]` fill
    the first n columns before the first forward (a kept cache). Dropping rows (`batch_select_indices`) copies the
    filled part of the rows kept."""

    def __init__(self, capacity: int, prefix_keys: torch.Tensor | None = None,
                 prefix_values: torch.Tensor | None = None):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        if prefix_keys is not None and prefix_values is not None and prefix_keys.shape[-2]:
            self.lazy_initialization(prefix_keys, prefix_values)
            self.length = prefix_keys.shape[-2]
            self._keys[:, :, : self.length] = prefix_keys
            self._values[:, :, : self.length] = prefix_values
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, _, dim = key_states.shape
        self._keys = key_states.new_empty((rows, heads, self.capacity, dim))
        self._values = value_states.new_empty((rows, value_states.shape[1], self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({end} positions)")
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    @classmethod
    def merged(cls, parts: list[tuple[PreallocatedLayer, list[int], int]], rows: int,
               capacity: int) -> PreallocatedLayer:
        """One layer of `rows` rows from parts (a layer, the rows its rows become, the column its columns start at),
        the columns left of each part zero (padding: masked, but read)."""
        keys, values = parts[0][0]._keys, parts[0][0]._values
        out = cls(capacity)
        out.dtype, out.device, out.is_initialized = keys.dtype, keys.device, True
        out._keys = keys.new_empty((rows, keys.shape[1], capacity, keys.shape[-1]))
        out._values = values.new_empty((rows, values.shape[1], capacity, values.shape[-1]))
        for layer, index, offset in parts:
            at = torch.tensor(index, device=out._keys.device)
            for mine, theirs in ((out._keys, layer._keys), (out._values, layer._values)):
                mine[at, :, :offset] = 0
                mine[at, :, offset:offset + layer.length] = theirs[:, :, : layer.length]
            out.length = max(out.length, offset + layer.length)
        out.keys, out.values = out._keys[:, :, : out.length], out._values[:, :, : out.length]
        return out

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        kept = []
        for buffer in (self._keys, self._values):
            new = buffer.new_empty((len(indices), *buffer.shape[1:]))
            new[:, :, : self.length] = buffer[indices, :, : self.length]
            kept.append(new)
        self._keys, self._values = kept
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]


@dataclass
class _Kept:
    """A trajectory's KV cache after its last generation: the ids it covers and, per layer, `[heads, n, head_dim]`."""

    ids: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)


class TransformersEngine:
    """Local generation with a transformers causal LM: one batch per call, per-request seeds.

    What it computes is what a plain loop computes (left-pad every context, prefill it, decode every row until the
    last one finishes); what it runs is less:
    - a trajectory's KV cache is kept after its generation (by request id, up to `keep_cache_mib`, least recently
      used first out), and its next request prefills only the tokens after the longest prefix the kept cache holds
      (the tool's response and the chat template's tokens, after a turn; the turn's start, after a SAAR rollback).
      A cache kept under other weights is never used: every kept cache is dropped when a parameter changed in place
      (its version counter moved, as an optimizer step or `load_state_dict` moves it) or was replaced (another
      tensor or storage). Not seen: a change through `.data` in place (`p.data.copy_(...)` moves no version
      counter); after one, call `forget()`;
    - requests with the same context and no kept cache (the G samples of a prompt in the first turn) share one
      prefill, whose cache is then repeated for each of them;
    - the cache is preallocated for the call (`PreallocatedLayer`), and finished rows leave the batch once they
      are a quarter of it (dropping rows copies the cache), so a decode step runs mostly rows still generating.
    Each row samples from its own generator, so neither the batch it shares nor when the others finish changes what
    it samples, up to the floating-point differences of another batch shape (as padding):
    `tests/rollout/test_engine_speed_equivalence.py` checks the tokens equal the plain loop's."""

    def __init__(self, model: Any, eos_id: int, pad_id: int, keep_cache_mib: float = 1024):
        self.model = model
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.keep_cache_mib = keep_cache_mib
        self._kept: dict[str, _Kept] = {}  # request id -> its kept cache, least recently used first
        self._weights: tuple[tuple[int, int, int], ...] = ()
        self._lock = threading.Lock()  # one forward at a time (verl's CPU rollout server scores from another thread)

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        with self._lock:
            return self._generate(requests, sampling)

    def forget(self) -> None:
        """Drop every kept cache (after a change of the weights that no version counter shows)."""
        with self._lock:
            self._kept.clear()

    def _reusable(self, request: GenRequest) -> tuple[_Kept | None, int]:
        """The kept cache of the request's trajectory and how many of its context's first tokens it holds (at most
        all but the last, which is run to get the next token's logits)."""
        kept = self._kept.get(request.request_id)
        if kept is None:
            return None, 0
        n = 0
        for a, b in zip(kept.ids, request.context[:-1]):
            if a != b:
                break
            n += 1
        return (kept, n) if n else (None, 0)

    def _generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenOutput]:
        out_ids: list[list[int]] = [[] for _ in requests]
        out_lps: list[list[float]] = [[] for _ in requests]
        rows = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]  # batch row -> request index
        if not rows:
            return [GenOutput((), ()) for _ in requests]
        weights = tuple((id(p), p.data_ptr(), p._version) for p in self.model.parameters())
        if weights != self._weights:  # new weights: no kept cache holds their keys and values
            self._kept.clear()
            self._weights = weights
        reuse = [self._reusable(requests[i]) for i in rows]
        # the rows to prefill: one per distinct context without a kept cache, one per row with one
        distinct: dict[Any, int] = {}
        source = [distinct.setdefault(requests[i].context if n == 0 else ("kept", b), len(distinct))
                  for b, (i, (_, n)) in enumerate(zip(rows, reuse))]
        firsts = [source.index(u) for u in range(len(distinct))]
        prefills = [(requests[rows[b]].context, *reuse[b]) for b in firsts]
        # prefilled in groups of like lengths of what is run (little padding), each right-aligned at the same column
        groups = length_chunks([len(context) - n for context, _, n in prefills])
        spans = [max(prefills[u][2] for u in g) + max(len(prefills[u][0]) - prefills[u][2] for u in g) for g in groups]
        end = max(spans)
        capacity = end + max(requests[i].max_new_tokens for i in rows)
        # the forward passes run on the model's device; sampling on the host, with the requests' CPU generators
        device = next(self.model.parameters()).device
        if len(groups) == 1:
            layers, logits, mask, columns, last = self._prefill(prefills, capacity, device)
        else:
            done = [self._prefill([prefills[u] for u in g], span, device) for g, span in zip(groups, spans)]
            layers = [PreallocatedLayer.merged([(part[0][layer], g, end - span) for part, g, span in
                                                zip(done, groups, spans)], len(prefills), capacity)
                      for layer in range(self.model.config.num_hidden_layers)]
            logits = torch.empty((len(prefills), done[0][1].shape[-1]))
            mask = torch.zeros((len(prefills), capacity), dtype=torch.long, device=device)
            columns, last = [[] for _ in prefills], torch.zeros((len(prefills), 1), dtype=torch.long, device=device)
            for (_, part_logits, part_mask, part_columns, part_last), g, span in zip(done, groups, spans):
                at = torch.tensor(g)
                logits[at] = part_logits
                mask[at.to(device), end - span:end] = part_mask[:, :span]
                last[at.to(device)] = part_last
                for u, cols in zip(g, part_columns):
                    columns[u] = [c + end - span for c in cols]
        cache = Cache(layers=layers)
        if source != list(range(len(rows))):  # a context shared by several rows: its cache repeated for each
            cache.batch_select_indices(torch.tensor(source, device=device))
        index = torch.tensor(source)
        logits, mask, next_pos = logits[index], mask[index.to(device)], last[index.to(device)] + 1
        columns = [columns[u] for u in source]
        generators = {i: torch.Generator().manual_seed(requests[i].seed) for i in rows}
        alive = [True] * len(rows)  # a finished row stays in the batch, unused, until a quarter of it has finished
        length = end
        while True:
            tokens = [self.pad_id] * len(rows)
            live = [b for b in range(len(rows)) if alive[b]]
            sampled = sample_rows(logits[live], sampling, [generators[rows[b]] for b in live])
            finished = []
            for b, token, lp in zip(live, *sampled):
                i = rows[b]
                r = requests[i]
                out_ids[i].append(token)
                out_lps[i].append(lp)
                if token != self.eos_id and token not in r.stop_ids and len(out_ids[i]) < r.max_new_tokens:
                    tokens[b] = token
                else:
                    alive[b] = False
                    finished.append((b, i, columns[b]))
            if finished:  # their caches kept for their next turn
                self._keep(cache, finished, requests, out_ids, length)
            if not any(alive):
                break
            if 4 * alive.count(False) >= len(rows):  # finished rows leave the batch and the cache
                kept_rows = [b for b in range(len(rows)) if alive[b]]
                select = torch.tensor(kept_rows, device=device)
                cache.batch_select_indices(select)
                mask, next_pos = mask[select], next_pos[select]
                rows, columns = [rows[b] for b in kept_rows], [columns[b] for b in kept_rows]
                tokens, alive = [tokens[b] for b in kept_rows], [True] * len(kept_rows)
            mask[:, length] = 1
            length += 1
            logits = self.model(input_ids=torch.tensor(tokens, device=device)[:, None],
                                attention_mask=mask[:, :length], position_ids=next_pos, past_key_values=cache,
                                use_cache=True).logits[:, -1].float().cpu()
            next_pos = next_pos + 1
        return [GenOutput(tuple(i), tuple(lp)) for i, lp in zip(out_ids, out_lps)]

    def _prefill(self, prefills: list[tuple[tuple[int, ...], _Kept | None, int]], capacity: int,
                 device: torch.device) -> tuple[list[PreallocatedLayer], torch.Tensor, torch.Tensor, list[list[int]],
                                                torch.Tensor]:
        """One forward over rows (context, kept cache, how many of its first tokens that cache holds): per row, the
        kept part right-aligned at column C (the most any row holds), then the rest right-aligned at column C + S (S:
        the longest rest), padding masked between. Returns the cache's layers (`capacity` columns), the logits of
        each row's next token [U, vocab] (on the host), the attention mask [U, capacity], each row's context
        columns and its last position [U, 1]."""
        cached = max(n for _, _, n in prefills)
        width = max(len(context) - n for context, _, n in prefills)
        ids = torch.full((len(prefills), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefills), capacity), dtype=torch.long)
        positions = torch.zeros((len(prefills), width), dtype=torch.long)
        columns = []
        for u, (context, _, n) in enumerate(prefills):
            s = len(context) - n
            ids[u, width - s:] = torch.tensor(context[n:])
            positions[u, width - s:] = torch.arange(n, len(context))
            mask[u, cached - n:cached] = 1
            mask[u, cached + width - s:cached + width] = 1
            columns.append(list(range(cached - n, cached)) + list(range(cached + width - s, cached + width)))
        layers = []
        for layer in range(self.model.config.num_hidden_layers):
            prefix: list[torch.Tensor | None] = [None, None]
            if cached:
                sample = next(kept for _, kept, n in prefills if kept is not None)
                for which, name in enumerate(("keys", "values")):
                    like = getattr(sample, name)[layer]
                    prefix[which] = like.new_zeros((len(prefills), like.shape[0], cached, like.shape[-1]))
                    for u, (_, kept, n) in enumerate(prefills):
                        if n:
                            prefix[which][u, :, cached - n:] = getattr(kept, name)[layer][:, :n]
            layers.append(PreallocatedLayer(capacity, prefix[0], prefix[1]))
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        logits = self.model(input_ids=ids, attention_mask=mask[:, :cached + width], position_ids=positions,
                            past_key_values=Cache(layers=layers), use_cache=True,
                            logits_to_keep=1).logits[:, -1].float().cpu()
        return layers, logits, mask, columns, positions[:, -1:]

    def _keep(self, cache: Cache, finished: list[tuple[int, int, list[int]]], requests: list[GenRequest],
              out_ids: list[list[int]], length: int) -> None:
        """Keep the caches of finished rows (batch row, request index, its context's columns): the context and
        every sampled token but the last, which was never run. The least recently used go first past the budget."""
        if not self.keep_cache_mib:
            return
        for b, i, columns in finished:
            r = requests[i]
            index = torch.tensor(columns + list(range(columns[-1] + 1, length)), device=cache.layers[0]._keys.device)
            self._kept.pop(r.request_id, None)
            self._kept[r.request_id] = _Kept(r.context + tuple(out_ids[i][:-1]),
                                             [layer._keys[b][:, index] for layer in cache.layers],
                                             [layer._values[b][:, index] for layer in cache.layers])
        total = sum(k.nbytes for k in self._kept.values())
        while total > self.keep_cache_mib * 2**20 and self._kept:
            total -= self._kept.pop(next(iter(self._kept))).nbytes


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
