"""Shared fixtures: the lab tokenizer, a builder of token-level turns with recognisable log-probs, and local JSON
HTTP servers standing in for SGLang."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cleaner import chat
from cleaner.lab.tokenizer import lab_tokenizer
from cleaner.trajectory import Span, ToolResult, Turn


@pytest.fixture(scope="session")
def tok():
    return lab_tokenizer()


class TurnFactory:
    """Builds turns as a sampler would: text encoded, `<|im_end|>` appended, split by `chat.split_turn`. Every
    sampled token gets a distinct log-prob (-0.001, -0.002, ...), so any misaligned splice shows."""

    def __init__(self, tok):
        self.tok = tok
        self.fmt = chat.get_format("hermes")
        self._lp = itertools.count(1)

    def prompt(self, question: str = "What is 6 * 7?") -> Span:
        return chat.prompt_span(self.tok, [{"role": "system", "content": "Use the tool."},
                                           {"role": "user", "content": question}])

    def turn(self, reasoning: str, code: str | None = None, status: str = "ok", output: str = "42",
             error_type: str | None = None, raw_call: str | None = None) -> Turn:
        """A turn; `raw_call` replaces the canonical hermes call text (for malformed calls)."""
        call_text = raw_call if raw_call is not None else (chat.hermes_call_text(code) if code is not None else "")
        text = reasoning + call_text
        ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.convert_tokens_to_ids(chat.IM_END)]
        logprobs = [-next(self._lp) / 1000 for _ in ids]
        split = chat.split_turn(self.tok, ids, logprobs, self.fmt)
        if split.parsed is None:
            return Turn(split.reasoning, split.stop)
        result = ToolResult(status, output, error_type)
        return Turn(split.reasoning, split.stop, split.call, split.parsed.code, result,
                    chat.observation_span(self.tok, self.fmt, output))


@pytest.fixture(scope="session")
def make(tok):
    return TurnFactory(tok)


def locate_by_prefix_decoding(tok, ids, marker: str = "<tool_call>") -> int | None:
    """The authors' boundary search, as a reference: decode every prefix until the marker appears (quadratic)."""
    for i in range(1, len(ids) + 1):
        if marker in tok.decode(ids[:i], skip_special_tokens=False):
            return i - 1
    return None


@pytest.fixture(scope="session")
def naive_locate():
    return locate_by_prefix_decoding


def assert_spans(traj, parts) -> None:
    """Assert the flat arrays of `traj` equal the concatenation of `parts`, each (span, provenance): ids, mask,
    log-probs and provenance, token by token."""
    ids, mask, logprobs, prov = [], [], [], []
    for span, p in parts:
        ids += span.ids
        mask += [int(p.trained)] * len(span)
        logprobs += list(span.logprobs) if p.trained else [0.0] * len(span)
        prov += [p] * len(span)
    assert traj.ids == ids
    assert traj.loss_mask == mask
    assert traj.logprobs == logprobs
    assert traj.provenance == prov
    assert len(traj.ids) == len(traj.loss_mask) == len(traj.logprobs) == len(traj.provenance)


@pytest.fixture(scope="session")
def expect():
    return assert_spans


class JsonServer:
    """A server on 127.0.0.1 that answers each POSTed JSON body with `answer(body)` as JSON (HTTP `status`),
    recording the bodies in `requests`."""

    def __init__(self, answer, status: int = 200):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                data = json.dumps(answer(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def json_server():
    """json_server(answer, status=200) -> a started JsonServer, closed after the test."""
    started: list[JsonServer] = []

    def start(answer, status: int = 200) -> JsonServer:
        started.append(JsonServer(answer, status))
        return started[-1]

    yield start
    for server in started:
        server.close()
