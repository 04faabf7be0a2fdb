"""`python -m cleaner.sandbox`: one JSON object; exit 0 whenever the sandbox worked."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cleaner.sandbox", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_cli_prints_one_json_object_for_a_successful_cell():
    proc = run_cli("--timeout-s", "2", "-c", "print(6 * 7)")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["status"], result["stdout"], result["tool_output"]) == ("ok", "42\n", "42\n")
    assert result["backend"] in ("bwrap", "rlimit")
    assert proc.stdout.count("\n") == 1  # one line, one object


def test_cli_exits_zero_when_the_code_fails():
    proc = run_cli("--timeout-s", "2", "-c", "undefined_name")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["status"], result["error_type"]) == ("error", "NameError")
    assert result["tool_output"].endswith("NameError: name 'undefined_name' is not defined\n")


def test_cli_reports_a_timeout_with_exit_zero():
    proc = run_cli("--timeout-s", "0.5", "-c", "while True: pass")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "timeout"


def test_cli_reads_a_file_and_stdin(tmp_path):
    script = tmp_path / "cell.py"
    script.write_text("import sys\nprint(sys.version_info[0])\n")
    from_file = run_cli("--timeout-s", "2", str(script))
    from_stdin = run_cli("--timeout-s", "2", "-", stdin="print('piped')")
    assert json.loads(from_file.stdout)["stdout"] == "3\n"
    assert json.loads(from_stdin.stdout)["stdout"] == "piped\n"


def test_cli_bad_usage_exits_two():
    assert run_cli().returncode == 2
    proc = run_cli("--timeout-s", "-1", "-c", "print(1)")
    assert proc.returncode == 2 and "sandbox.timeout_s must be a positive number" in proc.stderr


def test_cli_memory_limit_flag_is_applied():
    proc = run_cli("--timeout-s", "2", "--memory-mb", "256", "-c", "x = bytearray(512 * 1024 * 1024)")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "memory_limit"
