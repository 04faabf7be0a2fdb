"""The SandboxFusion client, tested up to the HTTP boundary against a small fake server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cleaner.sandbox import SandboxConfig, open_pool
from cleaner.sandbox.remote import RemoteSandboxPool, map_response


class FakeSandboxFusion:
    """Answers POST /run_code like a SandboxFusion server, running the code in a plain subprocess (this is a test
    double of the server's protocol, not a sandbox). `mode` makes it fail on purpose."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.mode = "normal"  # "normal" | "sandbox_error" | "http_500"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, **body})
                if fake.mode == "http_500":
                    self.send_response(500)
                    self.end_headers()
                    return
                reply = fake.answer(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, body: dict) -> dict:
        if self.mode == "sandbox_error":
            return {"status": "SandboxError", "message": "executor pod unavailable", "run_result": None}
        try:
            proc = subprocess.run([sys.executable, "-I", "-S", "-c", body["code"]], capture_output=True, text=True,
                                  timeout=body["run_timeout"])
            run = {"status": "Finished", "execution_time": 0.01, "return_code": proc.returncode,
                   "stdout": proc.stdout, "stderr": proc.stderr}
        except subprocess.TimeoutExpired as exc:
            run = {"status": "TimeLimitExceeded", "execution_time": body["run_timeout"], "return_code": None,
                   "stdout": (exc.stdout or b"").decode(), "stderr": ""}
        status = "Success" if run["return_code"] == 0 else "Failed"
        return {"status": status, "message": "", "compile_result": None, "run_result": run, "files": {}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    server = FakeSandboxFusion()
    yield server
    server.close()


def remote_config(url: str, **overrides: object) -> SandboxConfig:
    return SandboxConfig(backend="remote", remote_url=url, timeout_s=1.0, workers=2, **overrides)


@pytest.mark.asyncio
async def test_remote_ok_and_the_request_schema(fake_server):
    async with open_pool(remote_config(fake_server.url)) as pool:
        assert isinstance(pool, RemoteSandboxPool)
        result = await pool.run("print(6 * 7)")
    assert (result.status, result.stdout, result.backend) == ("ok", "42\n", "remote")
    (request,) = fake_server.requests
    assert request["path"] == "/run_code"
    assert (request["language"], request["run_timeout"], request["memory_limit_MB"]) == ("python", 1.0, 2048)


@pytest.mark.asyncio
async def test_remote_exception_maps_to_error_with_its_type(fake_server):
    async with open_pool(remote_config(fake_server.url)) as pool:
        result = await pool.run("x = 1\nundefined_name")
    assert (result.status, result.error_type) == ("error", "NameError")
    assert 'File "<cell-1>", line 2, in <module>' in result.stderr


@pytest.mark.asyncio
async def test_remote_time_limit_is_a_timeout_sent_once(fake_server):
    async with open_pool(remote_config(fake_server.url)) as pool:
        result = await pool.run("while True:\n    pass")
    assert result.status == "timeout"
    assert len(fake_server.requests) == 1  # never re-sent


@pytest.mark.asyncio
async def test_remote_sandbox_error_is_an_infra_error(fake_server):
    fake_server.mode = "sandbox_error"
    async with open_pool(remote_config(fake_server.url)) as pool:
        result = await pool.run("print(1)")
    assert result.status == "infra_error"
    assert "executor pod unavailable" in result.stderr


@pytest.mark.asyncio
async def test_remote_http_error_is_an_infra_error(fake_server):
    fake_server.mode = "http_500"
    async with open_pool(remote_config(fake_server.url)) as pool:
        result = await pool.run("print(1)")
    assert result.status == "infra_error" and "500" in result.stderr


@pytest.mark.asyncio
async def test_remote_unreachable_server_is_an_infra_error(fake_server):
    url = fake_server.url
    fake_server.close()  # the port is now closed on 127.0.0.1
    async with open_pool(remote_config(url)) as pool:
        result = await pool.run("print(1)")
    assert result.status == "infra_error" and "ConnectError" in result.stderr


@pytest.mark.asyncio
async def test_remote_session_replays_only_successful_cells(fake_server):
    async with open_pool(remote_config(fake_server.url)) as pool:
        async with pool.session() as session:
            assert (await session.run("a = 1\nprint('first')")).stdout == "first\n"
            assert (await session.run("b = 2\n1 / 0")).status == "error"
            result = await session.run("print(a, 'b' in globals())")
    assert (result.status, result.stdout) == ("ok", "1 False\n")  # replayed output is not shown again
    assert "a = 1" in fake_server.requests[-1]["code"] and "b = 2" not in fake_server.requests[-1]["code"]


def test_map_response_memory_error_signal_and_output_cap():
    def body(code: int, stdout: str = "", stderr: str = "") -> dict:
        run = {"status": "Finished", "execution_time": 0.5, "return_code": code, "stdout": stdout, "stderr": stderr}
        return {"status": "Failed", "message": "", "run_result": run}

    assert map_response(body(1, stderr="Traceback ...\nMemoryError\n"), 100)[:4] == (
        "memory_limit", "", "Traceback ...\nMemoryError\n", None)
    assert map_response(body(-11), 100)[0::3] == ("error", "SIGSEGV")
    assert map_response(body(3), 100)[0::3] == ("error", "SystemExit")
    assert map_response(body(1, stderr="json.decoder.JSONDecodeError: bad\n"), 100)[3] == "JSONDecodeError"
    status, stdout, stderr, _, duration_s = map_response(body(0, stdout="y" * 500), 100)
    assert (status, len(stdout), duration_s) == ("output_limit", 100, 0.5) and "OutputLimitError" in stderr
