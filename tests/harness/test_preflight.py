"""harness.preflight: one test per refusal, each on a fixture crafted here (a model folder missing its weights or
a shard or cut short, a malformed data file, a loopback head address, a port held by a socket this test binds, a
keep count no disk holds, no GPU, a lock naming other versions), the all-pass path with what this machine has,
and the preflight under a Python without site-packages, as on a bare GPU node: every failure a line, no
traceback. The fixture model's safetensors are written by hand, so the parameter counts are hand-computed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import preflight
from harness.records import REPO

# two tensors: 2 x 3 float32 and 4 bfloat16 = 10 parameters
TENSORS = {"a": ("F32", [2, 3]), "b": ("BF16", [4])}
DTYPE_BYTES = {"F32": 4, "BF16": 2}


def safetensors_bytes(tensors: dict) -> bytes:
    """A safetensors file: 8-byte header length, the JSON header, the data (zeros)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_BYTES[dtype] * (shape[0] * (shape[1] if len(shape) > 1 else 1))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(offset)


def write_model(folder, sharded=False):
    """A complete model folder: config, weights (one file, or two shards with their index), tokenizer, template."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "torch_dtype": "bfloat16"}))
    if sharded:
        shards = {name: f"model-0000{i + 1}-of-00002.safetensors" for i, name in enumerate(TENSORS)}
        for name, shard in shards.items():
            (folder / shard).write_bytes(safetensors_bytes({name: TENSORS[name]}))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    else:
        (folder / "model.safetensors").write_bytes(safetensors_bytes(TENSORS))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return folder


def write_data(tmp_path):
    train = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([{"data_source": "math_dapo", "prompt": [{"role": "user", "content": "1+1?"}],
                                          "reward_model": {"ground_truth": "2"}}] * 3), train)
    aime = tmp_path / "aime24.jsonl"
    aime.write_text(json.dumps({"id": 60, "problem": "Find 2 + 3.", "answer": "5", "url": "", "solution": ""}) + "\n")
    return train, aime


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def findings(*argv):
    """{check: [(status, text), ...]} of an in-process run, and its exit status."""
    out = {}
    for name, f in preflight.run(preflight.parser().parse_args([str(a) for a in argv])):
        assert "\n" not in f.text  # one line per finding
        out.setdefault(name, []).append((f.status, f.text))
    return out, 2 if any(s == "FAIL" for fs in out.values() for s, _ in fs) else 0


def only(found, name):
    [(status, text)] = found[name]
    return status, text


def test_no_arguments_on_a_machine_without_gpus_exits_2_naming_the_missing_gpus():
    """Checked red: the comparison inverted (fewer GPUs than expected pass)."""
    done = subprocess.run([sys.executable, "-m", "harness.preflight"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("FAIL  gpus: 0 of the 4 GPUs expected are visible (torch ")
    assert "fix: run on a GPU node with the GPUs allocated" in lines[0]
    assert lines[-1].startswith("preflight: ") and "failed: gpus" in lines[-1]
    assert [line.split()[1] for line in lines[:-1]][-1] == "sandbox:"  # every check ran, the last one too


@pytest.mark.parametrize("banner, line", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n",
     "0 of the 4 GPUs expected are visible: the NVIDIA driver is 550.54.15, older than 580.65.6"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16)\n",
     "0 of the 4 GPUs expected are visible: the NVIDIA driver is 570.86.15, older than 580.65.6"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)\n",
     "0 of the 4 GPUs expected are visible (torch "),
])
def test_an_old_driver_is_named_instead_of_the_allocation(tmp_path, monkeypatch, banner, line):
    """No GPU is visible here; the driver's banner (both formats the kernel module prints) decides which cause the
    line names: a driver older than CUDA 13's minimum, or else the allocation. Checked red: the version compared as
    text ('580.65.6' < '9...' ordering) and the open module's banner not parsed."""
    (tmp_path / "version").write_text(banner)
    monkeypatch.setattr(preflight, "DRIVER_VERSION_FILE", tmp_path / "version")
    status, text = only(findings("--gpus", 4)[0], "gpus")
    assert status == "FAIL" and text.startswith(line)
    assert ("R580 or later" in text) == ("older than" in line)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "model.safetensors").unlink(), "no weights (model.safetensors, model-*-of-*.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes(safetensors_bytes(TENSORS)[:-5]),
     f"model.safetensors is cut short: its header promises {len(safetensors_bytes(TENSORS))} bytes, the file has "
     f"{len(safetensors_bytes(TENSORS)) - 5}"),
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer (tokenizer.json, tokenizer.model"),
    (lambda d: (d / "tokenizer_config.json").write_text("{}"), "has no chat template"),
], ids=["no-weights", "truncated", "no-config", "no-tokenizer", "no-chat-template"])
def test_an_incomplete_model_folder_fails_saying_what_is_missing(tmp_path, breakage, message):
    """Checked red: truncation not compared with the file's size; a tokenizer_config.json without chat_template
    counted as a template."""
    folder = write_model(tmp_path / "model")
    assert only(findings("--gpus", 0, "--model", folder)[0], "model")[0] == "ok"
    breakage(folder)
    status, text = only(findings("--gpus", 0, "--model", folder)[0], "model")
    assert status == "FAIL" and message in text and "fix: " in text


def test_a_sharded_model_needs_every_shard_and_counts_parameters_over_all(tmp_path):
    """Checked red: parameters read from the first shard only (6, not 10)."""
    folder = write_model(tmp_path / "model", sharded=True)
    status, text = only(findings("--gpus", 0, "--model", folder)[0], "model")
    assert status == "ok" and "2 weight file(s) with 10 parameters" in text
    assert preflight.model_weights(folder)[1] == 10
    (folder / "model-00002-of-00002.safetensors").unlink()
    status, text = only(findings("--gpus", 0, "--model", folder)[0], "model")
    assert (status, text.split("; fix:")[0]) == (
        "FAIL", f"{folder}: model.safetensors.index.json lists 2 shards, 1 missing: model-00002-of-00002.safetensors")


def test_a_bad_data_file_fails_naming_the_row(tmp_path):
    """The data check is prepare_data's conversion: a row without ground truth is named with its file.
    Checked red: a data check that only tests the file exists."""
    train, aime = write_data(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"data_source": "math_dapo", "prompt": [{"role": "user", "content": "1+1?"}],
                               "reward_model": {"style": "rule"}}) + "\n")
    found, status = findings("--gpus", 0, "--train", bad, "--eval", f"aime24={aime}", "--eval", "aime26", "--eval",
                             f"aime25={tmp_path / 'absent.jsonl'}")
    assert status == 2
    assert [s for s, _ in found["data"]] == ["FAIL", "FAIL", "FAIL"]  # one line per bad input; aime24 is fine
    assert found["data"][0][1].startswith(f"train: {bad}: row 0: reward_model has no 'ground_truth'")
    assert found["data"][1][1].startswith("aime26: unknown data set 'aime26'")
    assert found["data"][2][1].startswith(f"aime25: {tmp_path / 'absent.jsonl'}: no such file; fix: ")
    ok = findings("--gpus", 0, "--train", train, "--eval", f"aime24={aime}")[0]
    assert only(ok, "data") == ("ok", "train 3 rows, aime24 1 rows")


def test_a_missing_benchmark_names_its_download_command(tmp_path, monkeypatch):
    """A set the harness downloads by name, absent from the data root: the fix starts with its download command.
    Checked red: the fix without it (the first line of the loader's message only)."""
    monkeypatch.setenv("CLEANER_DATA_ROOT", str(tmp_path))
    status, text = only(findings("--gpus", 0, "--eval", "math500")[0], "data")
    assert status == "FAIL" and text.startswith(f"math500: no data file found ({tmp_path}/")
    assert "fix: python -m harness.prepare_data math500; or correct the file" in text


@pytest.mark.parametrize("address, text", [
    ("127.0.1.1", "head address 127.0.1.1 is loopback (127.0.1.1): the other 1 node(s) cannot reach it"),
    ("::1", "head address ::1 is loopback (::1)"),
    ("", "2 nodes but no --head-address"),
])
def test_a_loopback_head_address_fails_for_several_nodes(address, text):
    """Checked red: only 127.0.0.1 treated as loopback (127.0.1.1, what `hostname --ip-address` gives on
    Debian-style hosts, passes)."""
    status, found = only(findings("--gpus", 0, "--nodes", 2, "--head-address", address)[0], "head")
    assert status == "FAIL" and found.startswith(text) and "CLEANER_HEAD_ADDRESS" in found
    assert only(findings("--gpus", 0, "--nodes", 1, "--head-address", "127.0.0.1")[0], "head")[0] == "skip"


def test_a_port_in_use_fails():
    """A socket this test binds and listens on (loopback) holds the port; once it is closed the port is free.
    Checked red: the check binding port 0 (any free port) instead of --ray-port."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        status, text = only(findings("--gpus", 0, "--ray-port", port)[0], "port")
    assert status == "FAIL" and text.startswith(f"port {port} is taken on this node (Address already in use)")
    assert only(findings("--gpus", 0, "--ray-port", port)[0], "port") == ("ok", f"{port} free")  # closed: free again


def test_too_little_disk_fails_with_the_estimate(tmp_path):
    """10 parameters x 12 bytes = 120 bytes per checkpoint; 10**12 kept = 120,000 GB, more than any disk here.
    Checked red: the bytes per parameter at 4 (weights only), the peak of keep 1 at 1."""
    folder = write_model(tmp_path / "model")
    status, text = only(findings("--gpus", 0, "--model", folder, "--runs", tmp_path / "runs",
                                 "--keep-checkpoints", 10**12)[0], "disk")
    assert status == "FAIL" and text.split(" free under ")[1].startswith(
        f"{tmp_path / 'runs'}, 120,000.0 GB needed: 1000000000000 checkpoints x 10 parameters x 12 bytes")
    status, text = only(findings("--gpus", 0, "--model", folder, "--keep-checkpoints", 0)[0], "disk")
    assert status == "FAIL" and "keep_checkpoints 0 keeps every checkpoint" in text
    assert preflight.checkpoint_bytes(4_000_000_000, 3) == (3, 144_000_000_000)  # the issue's 48 GB per 4B checkpoint
    assert preflight.checkpoint_bytes(4_000_000_000, 1) == (2, 96_000_000_000)  # keep 1: the new one is saved first


def test_a_version_other_than_the_lock_fails(tmp_path):
    """A lock naming other versions of what is installed here. Checked red: the local build tag (+cpu) compared
    too, so the matching torch fails."""
    torch_version = importlib.metadata.version("torch")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"verl==0.0.1\n    # via -r x\nsglang==0.5.12\ntorch=={torch_version.split('+')[0]}\n"
                    "transformers==1.0 ; sys_platform == 'linux'\n")
    found = findings("--gpus", 0, "--lock", lock)[0]["versions"]
    assert [(s, t.split("; fix:")[0]) for s, t in found] == [
        ("FAIL", f"verl {importlib.metadata.version('verl')} is installed, 0.0.1 locked"),
        ("FAIL", "sglang is not installed (0.5.12 locked)"),
        ("FAIL", f"transformers {importlib.metadata.version('transformers')} is installed, 1.0 locked")]


def test_everything_passes_with_what_this_machine_has(tmp_path, monkeypatch):
    """No GPU count (--gpus 0), sdpa attention (torch), versions against a lock of what is installed (sglang is
    not), a complete model, valid data, room for 3 checkpoints, a routable head address (TEST-NET-1, resolved
    without a query), a free port."""
    monkeypatch.setattr(preflight, "LOCKED", ("verl", "torch", "transformers"))
    lock = tmp_path / "requirements.lock"
    lock.write_text("".join(f"{n}=={importlib.metadata.version(n).split('+')[0]}\n" for n in preflight.LOCKED))
    train, aime = write_data(tmp_path)
    found, status = findings("--gpus", 0, "--attn-implementation", "sdpa", "--lock", lock, "--model",
                             write_model(tmp_path / "model"), "--train", train, "--eval", f"aime24={aime}", "--runs",
                             tmp_path / "runs", "--keep-checkpoints", 3, "--nodes", 2, "--head-address", "192.0.2.10",
                             "--ray-port", free_port())
    assert status == 0
    assert {name: [s for s, _ in fs] for name, fs in found.items()} == {
        "gpus": ["skip"], "attention": ["ok"], "versions": ["ok"], "model": ["ok"], "data": ["ok"], "disk": ["ok"],
        "head": ["ok"], "port": ["ok"], "layout": ["skip"], "sandbox": ["ok"]}
    assert "3 checkpoints x 10 parameters x 12 bytes" in only(found, "disk")[1]
    assert only(found, "head")[1] == "192.0.2.10 (192.0.2.10) for 2 nodes"


def test_without_site_packages_each_missing_module_is_a_failure_line(tmp_path):
    """As on a GPU node with a bare Python: -S hides every installed package, so torch, flash_attn, verl and the
    data loaders are missing; the preflight still runs every check and prints no traceback.
    Checked red: a top-level `import torch` in the module (it then cannot start)."""
    train, _ = write_data(tmp_path)
    done = subprocess.run([sys.executable, "-S", "-m", "harness.preflight", "--model", write_model(tmp_path / "m"),
                           "--train", train, "--keep-checkpoints", "3", "--ray-port", str(free_port())], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    lines = [line.split("; fix:")[0] for line in done.stdout.splitlines()]
    assert lines == [
        "FAIL  gpus: cannot run: No module named 'torch'",
        "FAIL  attention: flash_attention_2 needs flash_attn, which does not import (No module named 'flash_attn')",
        "FAIL  versions: verl is not installed (0.9.1 locked)",
        "FAIL  versions: sglang is not installed (0.5.12 locked)",
        "FAIL  versions: torch is not installed (2.11.0 locked)",
        "FAIL  versions: transformers is not installed (5.9.0 locked)",
        f"ok    model: {tmp_path / 'm'}: config (qwen3), 1 weight file(s) with 10 parameters, tokenizer, chat template",
        lines[7],  # data: the first third-party module prepare_data imports
        lines[8],  # disk: depends on the free space here
        "skip  head: one node: Ray's workers are local",
        lines[10],
        "skip  layout: no CPU count: no --cpus, and SLURM_CPUS_PER_TASK and SLURM_CPUS_ON_NODE are unset",
        "FAIL  sandbox: cannot run: No module named 'hydra'",
        "preflight: 5 of 10 checks failed: gpus, attention, versions, data, sandbox"]
    assert lines[7].startswith("FAIL  data: cannot run: No module named ")
    assert lines[8].startswith("ok    disk: ") and lines[10].startswith("ok    port: ")


def test_the_sandbox_check_runs_a_real_cell_with_the_runs_preloaded_modules():
    """preset=qwen3_4b: a real cell in bubblewrap with numpy and sympy imported. Checked red: a check that ignores
    the overrides (no modules preloaded, so the finding does not name them)."""
    assert only(findings("--gpus", 0, "preset=qwen3_4b")[0], "sandbox") == (
        "ok", "a cell ran in the bwrap sandbox, preloaded numpy, sympy")


@pytest.mark.parametrize("overrides, cause, fix", [
    (["sandbox.bwrap_path=/nonexistent/bwrap"], "bubblewrap not found", "install bubblewrap on the nodes"),
    (["sandbox.preload_modules=[no_such_module_here]"], "'no_such_module_here' is not installed",
     "install the module in the environment the sandbox runs"),
    (["sandbox=remote", "sandbox.remote_url=http://127.0.0.1:9", "sandbox.remote_request_timeout_s=2"],
     "request to the SandboxFusion server failed", "start the SandboxFusion server"),
])
def test_a_sandbox_that_cannot_start_names_its_cause_and_fix(overrides, cause, fix):
    """Each cause made real here (a bwrap path with nothing there, a module that is not installed, a port nothing
    listens on), each with its own remedy. Checked red: one generic fix for every cause."""
    status, text = only(findings("--gpus", 0, *overrides)[0], "sandbox")
    assert status == "FAIL" and cause in text.split("; fix: ")[0] and text.split("; fix: ")[1].startswith(fix)


def test_a_preloaded_module_that_fails_to_import_is_named():
    """A module that raises when the sandbox's supervisor imports it: the sandbox refuses to start, and the line
    says so with the module's error, from a preflight process as slurm/ runs it."""
    site = Path(tempfile.mkdtemp(dir="/tmp"))  # enterable by the cells' uids, unlike pytest's own folder
    site.chmod(0o755)
    (site / "broken_on_import.py").write_text("raise RuntimeError('broken on import')\n")
    done = subprocess.run([sys.executable, "-m", "harness.preflight", "--gpus", "0",
                           "sandbox.preload_modules=[broken_on_import]"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(site)})
    shutil.rmtree(site)
    [line] = [x for x in done.stdout.splitlines() if x.startswith("FAIL  sandbox: ")]
    assert "RuntimeError: broken on import" in line and "; fix: install the module" in line and done.returncode == 2


@pytest.mark.parametrize("values, blockers", [
    ({"kernel/unprivileged_userns_clone": "0", "user/max_user_namespaces": "63000"},
     ["kernel.unprivileged_userns_clone=0"]),
    ({"user/max_user_namespaces": "0", "kernel/apparmor_restrict_unprivileged_userns": "1"},
     ["user.max_user_namespaces=0", "kernel.apparmor_restrict_unprivileged_userns=1"]),
    ({"kernel/unprivileged_userns_clone": "1"}, []),
])
def test_disabled_user_namespaces_are_named_by_their_sysctl(tmp_path, values, blockers):
    """The sysctls read from a /proc/sys laid out as the kernel's (this machine runs as root, where bubblewrap
    needs no user namespace, so the kernel's own cannot be switched off here). The fix names each sysctl to set."""
    for name, value in values.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(value + "\n")
    assert preflight.userns_blockers(tmp_path) == blockers
    fix = preflight.sandbox_fix("bubblewrap cannot start a sandbox here: setting up uid map: Permission denied",
                                "auto", is_root=False, proc_sys=tmp_path)
    if blockers:
        assert fix.startswith(f"unprivileged user namespaces are disabled ({', '.join(blockers)})")
        assert all(f"sysctl -w {b.split('=')[0]}=" in fix for b in blockers)
    else:
        assert fix.startswith("see docs/sandbox.md")


@pytest.mark.parametrize("nodes, gpus, cpus, status, text", [
    (1, 8, 32, "FAIL", "each node (--cpus; in slurm/: SLURM_CPUS_PER_TASK) gives Ray 32 CPUs, but verl's layout for 1 "
                       "node(s) x 8 GPUs holds 33 on a node (8 GPU bundles x 3 + 8 TransferQueue storage units + 1 "
                       "TransferQueue controller): verl would wait for its placement group forever; fix: give the job "
                       "at least 33 CPUs per node (sbatch --cpus-per-task=33"),
    (1, 8, 33, "ok", "33 CPUs for Ray on each node, 33 held by verl's layout for 1 node(s) x 8 GPUs"),
    (1, 4, 32, "ok", "32 CPUs for Ray on each node, 21 held by verl's layout for 1 node(s) x 4 GPUs"),
    (2, 8, 32, "ok", "32 CPUs for Ray on each node, 29 held by verl's layout for 2 node(s) x 8 GPUs (8 GPU bundles x 3 "
                     "+ 4 of 8 TransferQueue storage units + 1 TransferQueue controller)"),
])
def test_the_layout_check_compares_the_cpus_ray_gets_with_verls_layout(nodes, gpus, cpus, status, text):
    """The issue: --gpus-per-node=8 --cpus-per-task=32 for the 4B preset, where verl waits forever (24 CPUs of GPU
    bundles + 9 TransferQueue actors = 33); one more CPU, 4 GPUs, or 2 nodes pass. The job's --nodes and --gpus
    come before the run's overrides, as slurm/common.sh gives them to harness.train, so they beat the preset's 1 x 4.
    Checked red: the job's --gpus left out of the composition (the preset's 4 GPUs: 8 pass with 32); `>` for `>=`."""
    found, _ = findings("--gpus", gpus, "--nodes", nodes, "--head-address", "192.0.2.10", "--cpus", cpus,
                        "preset=qwen3_4b")
    got_status, got = only(found, "layout")
    assert got_status == status and got.startswith(text)


def test_the_layout_check_takes_slurms_cpus_and_skips_without_a_count_or_without_verl(monkeypatch):
    """--cpus defaults to what slurm/common.sh gives `ray start --num-cpus`: SLURM_CPUS_PER_TASK, else
    SLURM_CPUS_ON_NODE. Overrides that compose no verl cluster (no preset) start no Ray. Checked red: the default
    read from SLURM_CPUS_ON_NODE first (33 passes for the 8 GPUs, 32 is what Ray gets)."""
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "33")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")
    assert only(findings("--gpus", 8, "preset=qwen3_4b")[0], "layout")[1].startswith(
        "each node (--cpus; in slurm/: SLURM_CPUS_PER_TASK) gives Ray 32 CPUs")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert only(findings("--gpus", 8, "preset=qwen3_4b")[0], "layout")[0] == "ok"
    assert only(findings("--gpus", 8)[0], "layout") == (
        "skip", "the run's overrides compose cluster=lab, which starts no Ray (give the run's overrides, preset=... "
                "included, as harness.train gets them)")
    monkeypatch.delenv("SLURM_CPUS_ON_NODE")
    assert only(findings("--gpus", 8, "preset=qwen3_4b")[0], "layout")[0] == "skip"


def test_the_layout_check_names_overrides_verl_cannot_take():
    """8 GPUs do not split into SGLang replicas of 3: harness/verl.py's refusal is the finding. Checked red: the
    translation's error escaping as a traceback (`cannot run`)."""
    status, text = only(findings("--gpus", 8, "--cpus", 64, "preset=qwen3_4b", "verl.rollout_tp=3")[0], "layout")
    assert status == "FAIL" and text.startswith(
        "the run's overrides do not translate for verl: cluster.gpus_per_node=8 must be >= 1 and a multiple of "
        "verl.rollout_tp=3")


def test_the_layout_check_as_slurm_runs_it_exits_2_for_the_issues_job():
    """The issue's job as slurm/common.sh runs the preflight: SLURM_CPUS_PER_TASK=32 in the environment, --gpus 8,
    the run's overrides; one FAIL line for the layout, exit status 2. Checked red: --cpus without its default."""
    done = subprocess.run([sys.executable, "-m", "harness.preflight", "--gpus", "8", "preset=qwen3_4b"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SLURM_CPUS_PER_TASK": "32"})
    [line] = [x for x in done.stdout.splitlines() if " layout: " in x]
    assert line.startswith("FAIL  layout: each node (--cpus; in slurm/: SLURM_CPUS_PER_TASK) gives Ray 32 CPUs, but "
                           "verl's layout for 1 node(s) x 8 GPUs holds 33 on a node")
    assert done.returncode == 2 and "layout" in done.stdout.splitlines()[-1]


@pytest.mark.parametrize("present, line", [
    ((), ("FAIL", "SGLang's rollout attends with flashinfer")),
    (("nvcc",), ("ok", "SGLang's flashinfer attention: kernels compiled on first use with ")),
    (("flashinfer_jit_cache",), ("ok", "SGLang's flashinfer attention: prebuilt kernels (flashinfer-jit-cache)")),
])
def test_sglangs_flashinfer_needs_nvcc_or_its_prebuilt_kernels(tmp_path, monkeypatch, present, line):
    """Where SGLang is installed (a stand-in package on the import path: the real one needs a GPU build), the
    attention check also says whether flashinfer can get its kernels. Checked red: the check made conditional on
    nvcc only (the JIT cache case failed), and run without SGLang (a line on this machine, which has none)."""
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    (site / "sglang").mkdir(parents=True)
    (site / "sglang" / "__init__.py").write_text("")
    bin_dir.mkdir()
    if "flashinfer_jit_cache" in present:
        (site / "flashinfer_jit_cache").mkdir()
        (site / "flashinfer_jit_cache" / "__init__.py").write_text("")
    if "nvcc" in present:
        (bin_dir / "nvcc").write_text("#!/bin/sh\n")
        (bin_dir / "nvcc").chmod(0o755)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    found = [f for f in findings("--gpus", 0, "--attn-implementation", "sdpa")[0]["attention"]
             if "flashinfer" in f[1]]
    assert [(s, t[:len(line[1])]) for s, t in found] == [line]
    if line[0] == "FAIL":
        assert "fix: load a CUDA 13 toolkit" in found[0][1] and "https://flashinfer.ai/whl/cu130" in found[0][1]


def test_without_sglang_the_attention_check_says_nothing_of_flashinfer():
    assert not [t for _, t in findings("--gpus", 0, "--attn-implementation", "sdpa")[0]["attention"]
                if "flashinfer" in t]
