"""`python -m cleaner.sandbox`: one JSON object; exit 0 whenever the sandbox worked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


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


def test_cli_a_cell_killed_by_an_unnamed_signal_is_its_own_error_with_exit_zero():
    """The signal used to crash the supervisor: status infra_error and exit 1, not charged to the code. Breakage
    checked: `_signal_name` without its fallback (exit 1)."""
    proc = run_cli("--timeout-s", "2", "-c", "import os\nos.kill(os.getpid(), 50)")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["status"], result["error_type"]) == ("error", "SIG50")


def test_cli_prints_valid_utf8_whatever_the_cell_and_the_locale():
    """Non-ASCII output under an ASCII locale, and a forged report whose error_type is a lone surrogate: the
    line is valid UTF-8 JSON (it used to be invalid UTF-8, or a crash). Breakages checked: printing through the
    text stream (UnicodeEncodeError under PYTHONIOENCODING=ascii), the report unchecked (a surrogate reached
    json.dumps)."""
    forged = ("import json, os, struct\nprint('π ≈ 3.14159')\n"
              "frame = json.dumps({'status': 'error', 'error_type': '\\ud800'}).encode()\n"
              "for fd in range(3, 40):\n    try:\n        os.write(fd, struct.pack('>I', len(frame)) + frame)\n"
              "    except OSError:\n        pass\nos._exit(0)\n")
    proc = subprocess.run([sys.executable, "-m", "cleaner.sandbox", "--timeout-s", "2", "-c", forged],
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.decode("utf-8"))  # strict: fails on invalid UTF-8
    assert (result["status"], result["error_type"], result["stdout"]) == ("error", "SandboxProtocolError",
                                                                          "π ≈ 3.14159\n")
    assert proc.stdout.count(b"\n") == 1 and result["isolation"]["backend"] == "bwrap"


def test_cli_preloads_modules_on_request():
    proc = run_cli("--timeout-s", "10", "--preload-modules", "numpy,sympy", "-c",
                   "import numpy, sympy\nprint(numpy.int64(6) * 7, sympy.sqrt(8))")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["status"], result["stdout"], result["isolation"]["preloaded"]) == (
        "ok", "42 2*sqrt(2)\n", ["numpy", "sympy"])


def test_cli_preloads_a_module_installed_under_tmp():
    """An environment under the host's /tmp (a clone or a virtual environment in a temporary folder): its
    site-packages are bound on top of the sandbox's private /tmp, not hidden under it. Checked red: the tmpfs
    mounted after the bindings, as before (ModuleNotFoundError in the zygote, exit 1)."""
    site = Path(tempfile.mkdtemp(dir="/tmp")) / "site-packages"
    try:
        site.mkdir()
        os.chmod(site.parent, 0o755)
        (site / "tmp_installed.py").write_text("ANSWER = 42\n")
        proc = subprocess.run([sys.executable, "-m", "cleaner.sandbox", "--preload-modules", "tmp_installed", "-c",
                               "import tmp_installed\nprint(tmp_installed.ANSWER)"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(site)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout)
        assert (result["status"], result["stdout"], result["isolation"]["preloaded"]) == (
            "ok", "42\n", ["tmp_installed"])
    finally:
        shutil.rmtree(site.parent)


def test_cli_refuses_code_that_is_not_utf8(tmp_path):
    script = tmp_path / "cell.py"
    script.write_bytes(b"print('\xff')\n")
    proc = run_cli(str(script))
    assert proc.returncode == 2 and "is not valid UTF-8" in proc.stderr
