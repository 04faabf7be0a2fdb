"""Pure parts: configuration checks, middle truncation, the ToolResult the model sees; the sync wrapper."""

from __future__ import annotations

import pytest

from cleaner.sandbox import ExecutionResult, SandboxConfig, run_code, truncate_middle
from cleaner.trajectory import ToolResult


def test_config_rejects_bad_values_with_clear_messages():
    with pytest.raises(ValueError, match=r"sandbox.timeout_s must be a positive number, got -1"):
        SandboxConfig(timeout_s=-1)
    with pytest.raises(ValueError, match=r"unknown sandbox.backend 'docker'; valid: auto, bwrap, rlimit, remote"):
        SandboxConfig(backend="docker")
    with pytest.raises(ValueError, match="preload_modules must be module names such as 'numpy', got 'numpy sympy'"):
        SandboxConfig(preload_modules=("numpy sympy",))
    with pytest.raises(ValueError, match="needs sandbox.remote_url"):
        SandboxConfig(backend="remote")
    with pytest.raises(ValueError, match="sandbox.memory_mb must be at least 64"):
        SandboxConfig(memory_mb=10)
    with pytest.raises(ValueError, match="sandbox.workers must be >= 1"):
        SandboxConfig(workers=0)
    with pytest.raises(ValueError, match="python_paths must be absolute"):
        SandboxConfig(python_paths=("site-packages",))


def test_config_defaults_are_the_papers():
    config = SandboxConfig()
    assert (config.timeout_s, config.cpu_time_s, config.backend, config.preload_modules) == (4.0, 4.0, "auto", ())


def test_the_cpu_time_limit_follows_the_wall_clock_limit_unless_set():
    """sandbox.timeout_s=10 alone must not leave CPU-bound cells killed after 4 s of CPU time."""
    assert SandboxConfig(timeout_s=10).cpu_time_s == 10
    assert SandboxConfig(timeout_s=10, cpu_time_s=3).cpu_time_s == 3


def test_truncate_middle_hand_case():
    text = "HEAD-" + "m" * 100 + "-TAIL"
    out = truncate_middle(text, 40)  # 110 chars; the marker takes 22, leaving 9 + 9, so 92 are cut
    assert out == "HEAD-mmmm\n...[92 chars cut]...\nmmmm-TAIL"
    assert len(out) == 40
    assert truncate_middle("short", 40) == "short"


@pytest.mark.parametrize("length", [41, 99, 100, 101, 1000, 12345, 10**6])
@pytest.mark.parametrize("max_chars", [30, 40, 256])
def test_truncate_middle_keeps_head_and_tail_and_counts_the_cut(length, max_chars):
    text = "".join(chr(65 + i % 26) for i in range(length))
    out = truncate_middle(text, max_chars)
    if length <= max_chars:
        assert out == text
        return
    assert len(out) <= max_chars
    head, rest = out.split("\n...[", 1)
    count, tail = rest.split(" chars cut]...\n", 1)
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + int(count) + len(tail) == length
    assert len(head) - len(tail) in (0, 1)


def test_truncate_middle_below_the_marker_size_keeps_the_head():
    assert truncate_middle("abcdefghijklmnopqrstuvwxyz", 5) == "abcde"


def test_to_tool_result_shows_stdout_then_the_stderr_tail():
    result = ExecutionResult("error", stdout="partial", stderr="Traceback...\nNameError: name 'x' is not defined\n",
                             error_type="NameError")
    tool = result.to_tool_result()
    assert tool == ToolResult("error", "partial\nTraceback...\nNameError: name 'x' is not defined\n", "NameError")
    short = result.to_tool_result(max_chars=30)
    assert short.output == "part\n...[48 chars cut]...\nned\n"  # 56 chars: 4 head + 48 cut + 4 tail


def test_to_tool_result_is_whole_unless_cut():
    """The sandbox does not decide what the model is shown: the episode cuts to algo.max_tool_response_chars."""
    result = ExecutionResult("ok", stdout="x" * 1000)
    assert result.to_tool_result().output == "x" * 1000
    assert len(result.to_tool_result(max_chars=100).output) == 100


def test_result_rejects_unknown_status():
    with pytest.raises(ValueError, match="unknown sandbox status 'malformed'"):
        ExecutionResult("malformed")


@pytest.mark.parametrize("error_type", [["NameError"], "\ud800", "not a name", "E" * 129, 7])
def test_result_rejects_an_error_type_that_is_not_a_short_identifier(error_type):
    """Downstream (SAAR counters, the JSONL writer) takes error_type as a class name. Breakage checked: no check
    in __post_init__ (all five constructed)."""
    with pytest.raises(ValueError, match="error_type must be None or a Python identifier of at most 128"):
        ExecutionResult("error", error_type=error_type)


def test_config_is_frozen_hashable_and_keeps_tuples():
    """SandboxConfig is a dict key of the verl plugin's pools; YAML gives lists. Breakage checked: no tuple()
    of preload_modules in __post_init__ (unhashable)."""
    config = SandboxConfig(preload_modules=["numpy", "sympy"], python_paths=["/opt/lib"])
    assert config.preload_modules == ("numpy", "sympy") and config.python_paths == ("/opt/lib",)
    assert {config: 1}[SandboxConfig(preload_modules=("numpy", "sympy"), python_paths=("/opt/lib",))] == 1


def test_run_code_is_a_synchronous_one_off():
    result = run_code("print(sum(range(10)))", SandboxConfig(timeout_s=2.0))
    assert (result.status, result.stdout) == ("ok", "45\n")
    assert result.backend in ("bwrap", "rlimit")
