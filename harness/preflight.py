"""Checks that a node can start the cluster path, before Ray starts: `python -m harness.preflight`.

    python -m harness.preflight --gpus 0 --model DIR --train FILE --eval aime24    a login node: no GPU count
    python -m harness.preflight --gpus 4 --nodes 2 --head-address ADDR ...          what slurm/common.sh runs

Every check runs, in the order of `CHECKS`, and prints one line per finding: `ok` with what it saw, `FAIL` with
what is wrong and the fix, or `skip` with why it did not apply (its input was not given). The exit status is 2
when any check failed, else 0. The checks:

    gpus       this node shows at least --gpus CUDA devices (torch's count, which honours CUDA_VISIBLE_DEVICES);
               when it does not, a kernel driver older than CUDA 13's minimum (R580) is named as the cause
    attention  the attention implementation verl's actor uses (--attn-implementation) imports: flash_attention_2
               needs flash_attn, built for the installed torch (no hub download: HF_HUB_OFFLINE=1 on the nodes);
               and, where SGLang is installed, its flashinfer attention can get its kernels: nvcc to compile them,
               or flashinfer's prebuilt JIT cache
    versions   verl, sglang, torch and transformers are installed at the versions of gpu/requirements.lock
    model      --model holds config.json, complete weights (every shard of a sharded index present, every
               safetensors file whole: its header and data add up to its size), a tokenizer and a chat template
    data       --train and each --eval convert as the harness will convert them (`prepare_data.convert`, in
               memory: nothing is written)
    disk       the filesystem of --runs has room for the checkpoints verl keeps at its peak (see `checkpoint_bytes`)
    head       with --nodes > 1, --head-address resolves, and not to a loopback address the other nodes cannot reach
    port       --ray-port is free on this node (nothing listens on it), for the Ray head
    layout     the CPUs Ray gets on a node (--cpus) hold what verl 0.9.1's Ray layout reserves there for the job
               (--nodes x --gpus and the run's overrides; `harness.ray_layout`: 3 per GPU plus the TransferQueue
               actors), else verl waits for its placement group forever without a word
    sandbox    one real cell runs in the sandbox the run's overrides configure (its backend, its preloaded modules):
               a failure names its cause (bubblewrap missing, user namespaces disabled and by which sysctl, a
               preloaded module that does not import, a remote server that does not answer) and its fix

This module imports only the standard library: each check imports what it needs (torch, flash_attn, the data
loaders) when it runs, so the preflight runs in any Python 3.11+, and a module a check needs but cannot import is
that check's failure, never a traceback.

Not checked: the other nodes of a multi-node job (their GPUs are counted by Ray as it comes up, `wait_for_ray`
in slurm/common.sh), free GPU memory, and whether SGLang's server starts.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import math
import os
import re
import shutil
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "gpu" / "requirements.lock"
LOCKED = ("verl", "sglang", "torch", "transformers")  # the versions the versions check compares with the lock
# verl's checkpoint (checkpoint.save_contents: model, optimizer, extra): the FSDP actor's fp32 parameters and
# AdamW's two fp32 moments; no gradients, and extra (lr scheduler, RNG) is a few kB
CHECKPOINT_BYTES_PER_PARAMETER = 4 + 4 + 4
# the attention implementation -> the module it needs
ATTENTION_MODULES = {"flash_attention_2": "flash_attn", "sdpa": "torch", "eager": "torch"}
# flash-attn 2.8.3 for torch 2.11 / CUDA 13.0 / CPython 3.12, prebuilt by verl's project (PyPI has only the source)
FLASHINFER_INDEX = "https://flashinfer.ai/whl/cu130"  # flashinfer's wheels for CUDA 13.0, flashinfer-jit-cache's
CONTAINER = "CLEANER_CONTAINER, docs/cluster.md"  # the image with bubblewrap, numpy and sympy
FLASH_ATTN_WHEEL = ("https://github.com/verl-project/verl-wheelhouse/releases/download/flash-attention-v2.8.3/"
                    "flash_attn-2.8.3-cp312-cp312-linux_x86_64.whl")
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")  # the loaded kernel driver's banner
MIN_DRIVER = (580, 65, 6)  # CUDA 13.0's minimum Linux driver; the lock's torch 2.11 is built for CUDA 13.0
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}  # config.json's torch_dtype, for .bin weights


@dataclass(frozen=True)
class Finding:
    """One line of the report: status "ok" | "FAIL" | "skip", and the text (a failure's ends with its fix)."""

    status: str
    text: str


def ok(text: str) -> Finding:
    return Finding("ok", text)


def fail(text: str, fix: str) -> Finding:
    return Finding("FAIL", f"{text.rstrip('.')}; fix: {fix}")


def skip(text: str) -> Finding:
    return Finding("skip", text)


CHECKS: dict[str, Callable[[argparse.Namespace], list[Finding]]] = {}


def check(name: str):
    """Register a check under `name`: a function of the parsed arguments returning its findings."""
    def register(fn):
        CHECKS[name] = fn
        return fn
    return register


class ModelError(Exception):
    """A model folder that is incomplete; the message says what is missing."""


# --- gpus ---------------------------------------------------------------------------------------------------------

def driver_version() -> tuple[int, ...] | None:
    """The loaded NVIDIA kernel driver's version (`DRIVER_VERSION_FILE`), or None without one."""
    try:
        text = DRIVER_VERSION_FILE.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", text)
    return tuple(int(x) for x in found.group(1).split(".")) if found else None


@check("gpus")
def check_gpus(args: argparse.Namespace) -> list[Finding]:
    if args.gpus == 0:
        return [skip("not counted (--gpus 0)")]
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none: a CPU build'}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    driver = driver_version()
    if seen < args.gpus and driver is not None and driver < MIN_DRIVER:
        return [fail(f"{seen} of the {args.gpus} GPUs expected are visible: the NVIDIA driver is "
                     f"{'.'.join(map(str, driver))}, older than {'.'.join(map(str, MIN_DRIVER))}, which the lock's "
                     f"CUDA 13 build of torch needs ({build})",
                     "run on nodes with a newer driver (R580 or later), or build the environment for the CUDA the "
                     "driver supports")]
    if seen < args.gpus:
        return [fail(f"{seen} of the {args.gpus} GPUs expected are visible ({build}; CUDA_VISIBLE_DEVICES={visible}"
                     f"; NVIDIA driver {'.'.join(map(str, driver)) if driver else 'not loaded'})",
                     "run on a GPU node with the GPUs allocated (sbatch --gpus-per-node), or pass the count this node "
                     "has (--gpus N; in slurm/: CLEANER_GPUS_PER_NODE)")]
    names = sorted({torch.cuda.get_device_name(i) for i in range(seen)})
    return [ok(f"{seen} visible ({', '.join(names)}), {args.gpus} expected; {build}")]


# --- attention ----------------------------------------------------------------------------------------------------

@check("attention")
def check_attention(args: argparse.Namespace) -> list[Finding]:
    impl = args.attn_implementation
    module = ATTENTION_MODULES[impl]
    try:
        loaded = importlib.import_module(module)
    except ImportError as e:  # missing, or built for another torch (an undefined symbol)
        return [fail(f"{impl} needs {module}, which does not import ({e})",
                     f"pip install --no-deps {FLASH_ATTN_WHEEL} (docs/cluster.md, Install)" if module == "flash_attn"
                     else "install the GPU environment (docs/cluster.md, Install)"), *rollout_attention()]
    version = getattr(loaded, "__version__", None)
    return [ok(f"{impl}: {module}{f' {version}' if version else ''} imports"), *rollout_attention()]


def rollout_attention() -> list[Finding]:
    """The rollout's attention: verl 0.9.1 starts SGLang >= 0.5.12 with `attention_backend=flashinfer`
    (`async_sglang_server.py`), and flashinfer compiles kernels with nvcc on first use unless its prebuilt JIT cache
    (`flashinfer-jit-cache`) is installed; the lock holds neither. No finding without SGLang (`versions` says so)."""
    if importlib.util.find_spec("sglang") is None:
        return []
    if importlib.util.find_spec("flashinfer_jit_cache") is not None:
        return [ok("SGLang's flashinfer attention: prebuilt kernels (flashinfer-jit-cache)")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc") or (cuda_home and shutil.which("nvcc", path=str(Path(cuda_home) / "bin")))
    if nvcc:
        return [ok(f"SGLang's flashinfer attention: kernels compiled on first use with {nvcc}")]
    return [fail("SGLang's rollout attends with flashinfer (verl sets attention_backend=flashinfer for sglang >= "
                 "0.5.12), which compiles its kernels with nvcc on first use, but neither nvcc (PATH, CUDA_HOME) nor "
                 "flashinfer's prebuilt kernels (flashinfer-jit-cache) are here",
                 f"load a CUDA 13 toolkit on the nodes (module load cuda, or CUDA_HOME), or pip install "
                 f"flashinfer-jit-cache at flashinfer's version from {FLASHINFER_INDEX}, or run in the container "
                 f"({CONTAINER})")]


# --- versions -----------------------------------------------------------------------------------------------------

def locked_versions(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a requirements-style lock (names normalised: lower case,
    `_` and `.` as `-`)."""
    versions = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.split("#")[0].split(";")[0].strip().partition("==")
        if sep:
            versions[normalise(name.split("[")[0])] = version.strip()
    return versions


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


@check("versions")
def check_versions(args: argparse.Namespace) -> list[Finding]:
    if not args.lock.is_file():
        return [fail(f"no lock at {args.lock}", "give the checkout's gpu/requirements.lock (--lock)")]
    locked = locked_versions(args.lock)
    found, failures = [], []

    shown = "gpu/requirements.lock" if args.lock == LOCK else str(args.lock)

    def fix(name: str, version: str) -> str:
        return (f"install the lock (uv pip sync {shown}), or in verl's image pip install --no-deps {name}=={version} "
                "(docs/cluster.md, Install)")

    for name in LOCKED:
        want = locked[name]
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            failures.append(fail(f"{name} is not installed ({want} locked)", fix(name, want)))
            continue
        if have.split("+")[0] != want:  # a local build tag (2.11.0+cu130) is the same release
            failures.append(fail(f"{name} {have} is installed, {want} locked", fix(name, want)))
        found.append(f"{name} {have}")
    return failures or [ok(f"{', '.join(found)}, as {shown} locks")]


# --- model --------------------------------------------------------------------------------------------------------

def safetensors_parameters(path: Path) -> int:
    """The number of values in a safetensors file, from its header; a ModelError if the file is cut short or is
    not safetensors (its header's data offsets must end exactly at the end of the file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if header_len > size - 8:
            raise ModelError(f"{path.name} is not a whole safetensors file ({size} bytes)")
        header = json.loads(f.read(header_len))
    tensors = [t for k, t in header.items() if k != "__metadata__"]
    end = max((t["data_offsets"][1] for t in tensors), default=0)
    if 8 + header_len + end != size:
        raise ModelError(f"{path.name} is cut short: its header promises {8 + header_len + end} bytes, the file has "
                         f"{size}")
    return sum(math.prod(t["shape"]) for t in tensors)


def weight_files(folder: Path) -> list[Path]:
    """The model's weight files: a sharded index's shards (all present), else *.safetensors, else
    pytorch_model.bin; a ModelError naming what is missing."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelError(f"{index} lists {len(shards)} shards, {len(missing)} missing: {', '.join(missing[:3])}"
                                 + (", ..." if len(missing) > 3 else ""))
            return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelError("no weights (model.safetensors, model-*-of-*.safetensors with their index, or "
                         "pytorch_model.bin)")
    return files


def model_weights(folder: Path) -> tuple[list[Path], int]:
    """The model's weight files and its parameter count: from the safetensors headers; for .bin weights, their
    bytes over config.json's torch_dtype (2 bytes when it names none). A ModelError for incomplete weights."""
    files = weight_files(folder)
    if files[0].suffix == ".safetensors":
        return files, sum(safetensors_parameters(f) for f in files)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return files, sum(f.stat().st_size for f in files) // DTYPE_BYTES.get(dtype, 2)


def has_chat_template(folder: Path) -> bool:
    """Where transformers finds a chat template: tokenizer_config.json's chat_template, chat_template.jinja or
    chat_template.json."""
    config = folder / "tokenizer_config.json"
    in_config = config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))
    return in_config or (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file()


def has_tokenizer(folder: Path) -> bool:
    """A fast tokenizer (tokenizer.json), a SentencePiece model, or a BPE vocabulary with its merges."""
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")) or all(
        (folder / f).is_file() for f in ("vocab.json", "merges.txt"))


@check("model")
def check_model(args: argparse.Namespace) -> list[Finding]:
    if args.model is None:
        return [skip("no --model given")]
    folder = args.model
    fix = ("download the whole checkpoint into it (e.g. huggingface-cli download Gen-Verse/Qwen3-4B-RA-SFT "
           f"--local-dir {folder}), or point --model (in slurm/: CLEANER_MODEL or CLEANER_MODELS) at one")
    if not folder.is_dir():
        return [fail(f"{folder} is not a folder", fix)]
    failures = []
    config = folder / "config.json"
    if not config.is_file():
        failures.append(fail(f"{folder} has no config.json", fix))
    try:
        files, parameters = model_weights(folder)
    except ModelError as e:
        failures.append(fail(f"{folder}: {e}", fix))
    if not has_tokenizer(folder):
        failures.append(fail(f"{folder} has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with "
                             "merges.txt)", fix))
    if not has_chat_template(folder):
        failures.append(fail(f"{folder} has no chat template (tokenizer_config.json's chat_template, "
                             "chat_template.jinja or chat_template.json)",
                             "copy the chat template of the model it was fine-tuned from"))
    if failures:
        return failures
    model_type = json.loads(config.read_text()).get("model_type")
    return [ok(f"{folder}: config ({model_type}), {len(files)} weight file(s) with {parameters:,} parameters, "
               "tokenizer, chat template")]


# --- data ---------------------------------------------------------------------------------------------------------

@check("data")
def check_data(args: argparse.Namespace) -> list[Finding]:
    if args.train is None and not args.eval:
        return [skip("no --train or --eval given")]
    from harness import prepare_data

    jobs = ([(prepare_data.TRAIN, args.train)] if args.train else []) + [prepare_data.eval_spec(s) for s in args.eval]
    found, failures = [], []
    for name, path in jobs:
        try:
            _, converted = prepare_data.convert(name, path, args.chat_format)
        except ValueError as e:  # DataError: the file; ValueError: an unknown benchmark name
            first, *ways = str(e).splitlines()  # a missing benchmark's message goes on to list where to get it
            first = first.rsplit(". ", 1)[0] + "." if first.endswith(":") else first
            download = [w.split(": ", 1)[1].split(" (into")[0] for w in ways if "harness.prepare_data" in w]
            failures.append(fail(first if first.startswith(f"{name}:") else f"{name}: {first}",
                                 "".join(f"{d}; or " for d in download) + "correct the file, or point --train / "
                                 "--eval (in slurm/: CLEANER_TRAIN_FILE, CLEANER_EVAL_SETS, CLEANER_DATA_ROOT) at "
                                 "a valid one"))
            continue
        left = sum(converted.left_out.values())
        found.append(f"{name} {len(converted.rows)} rows" + (f" ({left} left out)" if left else ""))
    return failures or [ok(", ".join(found))]


# --- disk ---------------------------------------------------------------------------------------------------------

def checkpoint_bytes(parameters: int, keep: int) -> tuple[int, int]:
    """(checkpoints on disk at the peak, their bytes) for verl keeping `keep` checkpoints: each is `parameters` x
    CHECKPOINT_BYTES_PER_PARAMETER (fp32 weights, AdamW's two fp32 moments); verl deletes the oldest before it saves
    when keep >= 2, but with keep 1 it saves the new one before deleting the old, so the peak is max(keep, 2)."""
    peak = max(keep, 2)
    return peak, peak * parameters * CHECKPOINT_BYTES_PER_PARAMETER


def gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:,.1f} GB"


@check("disk")
def check_disk(args: argparse.Namespace) -> list[Finding]:
    if args.model is None:
        return [skip("no --model given: a checkpoint's size comes from the model's parameters")]
    try:
        parameters = model_weights(args.model)[1]
    except (ModelError, OSError) as e:
        return [skip(f"no size estimate: the model's weights are not readable ({e})")]
    if args.keep_checkpoints == 0:
        return [fail(f"keep_checkpoints 0 keeps every checkpoint ({gb(parameters * CHECKPOINT_BYTES_PER_PARAMETER)} "
                     "each), so no disk is enough", "keep a few: verl.keep_checkpoints=3 (or --keep-checkpoints 3)")]
    peak, need = checkpoint_bytes(parameters, args.keep_checkpoints)
    where = next(p for p in (args.runs, *args.runs.parents) if p.exists())
    free = shutil.disk_usage(where).free
    text = (f"{gb(free)} free under {args.runs}, {gb(need)} needed: {peak} checkpoints x {parameters:,} parameters x "
            f"{CHECKPOINT_BYTES_PER_PARAMETER} bytes (fp32 weights and AdamW's two moments)")
    if free < need:
        return [fail(text, "free space, point --runs (in slurm/: CLEANER_RUNS) at a larger filesystem, or keep fewer "
                           "checkpoints (verl.keep_checkpoints)")]
    return [ok(text)]



# --- head ---------------------------------------------------------------------------------------------------------

@check("head")
def check_head(args: argparse.Namespace) -> list[Finding]:
    if args.nodes <= 1:
        return [skip("one node: Ray's workers are local")]
    fix = ("set CLEANER_HEAD_ADDRESS to the head node's address on the cluster network (one of `hostname -I` on it; "
           "`hostname --ip-address` gives 127.0.1.1 where /etc/hosts maps the host name to it)")
    if not args.head_address:
        return [fail(f"{args.nodes} nodes but no --head-address", fix)]
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(args.head_address, None)})
    except socket.gaierror as e:
        return [fail(f"head address {args.head_address} does not resolve ({e.strerror})", fix)]
    loopback = [a for a in addresses if ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if loopback:
        return [fail(f"head address {args.head_address} is loopback ({', '.join(loopback)}): the other "
                     f"{args.nodes - 1} node(s) cannot reach it", fix)]
    return [ok(f"{args.head_address} ({', '.join(addresses)}) for {args.nodes} nodes")]


# --- port ---------------------------------------------------------------------------------------------------------

@check("port")
def check_port(args: argparse.Namespace) -> list[Finding]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no obstacle
        try:
            s.bind(("", args.ray_port))
        except OSError as e:
            return [fail(f"port {args.ray_port} is taken on this node ({e.strerror})",
                         "stop what holds it (a Ray head left over: ray stop), or pick a free port (--ray-port; in "
                         "slurm/: CLEANER_RAY_PORT)")]
    return [ok(f"{args.ray_port} free")]


# --- layout -------------------------------------------------------------------------------------------------------

def slurm_cpus() -> int | None:
    """The CPUs slurm/common.sh gives `ray start --num-cpus` on each node: SLURM_CPUS_PER_TASK, else
    SLURM_CPUS_ON_NODE; None outside a SLURM job."""
    found = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    return int(found) if found else None


@check("layout")
def check_layout(args: argparse.Namespace) -> list[Finding]:
    """verl's Ray layout for the job (--nodes x --gpus, the run's overrides) fits the CPUs Ray gets on a node."""
    if args.cpus is None:
        return [skip("no CPU count: no --cpus, and SLURM_CPUS_PER_TASK and SLURM_CPUS_ON_NODE are unset")]
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness import cli, ray_layout

    job = [f"cluster.nodes={args.nodes}", *([f"cluster.gpus_per_node={args.gpus}"] if args.gpus else [])]
    try:  # the job's layout first, then the run's overrides, in the order slurm/common.sh gives harness.train
        cfg = cli.composed("train", [*job, *args.overrides])
        if cfg.cluster.kind not in ("verl", "verl_cpu"):
            return [skip(f"the run's overrides compose cluster={cfg.cluster.kind}, which starts no Ray (give the "
                         "run's overrides, preset=... included, as harness.train gets them)")]
        lay = ray_layout.layout(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # in composing or translating (ConfigError)
        return [fail(f"the run's overrides do not translate for verl: {' '.join(str(e).split())}",
                     "correct them (python -m harness.train --cfg job OVERRIDES shows the config)")]
    cpus = lay.ray_cpus if lay.ray_cpus is not None else args.cpus
    where = ("verl's own Ray (ray_kwargs.ray_init.num_cpus)" if lay.ray_cpus is not None
             else "each node (--cpus; in slurm/: SLURM_CPUS_PER_TASK)")
    problem = ray_layout.shortfall(lay, [ray_layout.Node(where, cpus, lay.gpus_per_node)] * lay.nodes)
    if problem:
        return [fail(*problem)]
    need = ray_layout.cpus_per_node(lay)
    return [ok(f"{cpus} CPUs for Ray on each node, {need.cpus} held by verl's layout for {lay.nodes} node(s) x "
               f"{lay.gpus_per_node} GPUs ({need.text()})")]


# --- sandbox ------------------------------------------------------------------------------------------------------

USERNS_SYSCTLS = (  # a value that disables unprivileged user namespaces, per sysctl, and how to allow them
    ("kernel.unprivileged_userns_clone", "0", "1"),  # Debian and Ubuntu kernels
    ("user.max_user_namespaces", "0", "15000"),  # any kernel
    ("kernel.apparmor_restrict_unprivileged_userns", "1", "0"),  # Ubuntu 23.10 and later
)


def userns_blockers(proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """The sysctls that disable unprivileged user namespaces here, as `name=value` (those this kernel has)."""
    found = []
    for name, off, _ in USERNS_SYSCTLS:
        path = proc_sys / name.replace(".", "/")
        if path.exists() and path.read_text().strip() == off:
            found.append(f"{name}={off}")
    return found


def sandbox_fix(message: str, backend: str, is_root: bool, proc_sys: Path = Path("/proc/sys")) -> str:
    """The remedy for a sandbox that did not start, by what its message says went wrong."""
    rlimit = "or sandbox.backend=rlimit (cells then run without namespace isolation: they see the node's files "
    rlimit += "and network)"
    if backend == "remote":
        return "start the SandboxFusion server, or point sandbox.remote_url at one that answers from this node"
    if "preload_modules" in message or "refused to start" in message:
        return ("install the module in the environment the sandbox runs (CLEANER_PYTHON's; the container has numpy "
                "and sympy), or drop it from sandbox.preload_modules")
    if "bubblewrap not found" in message:
        return (f"install bubblewrap on the nodes (apt-get install bubblewrap), or run in the container ({CONTAINER}), "
                f"{rlimit}")
    if "cannot start a sandbox" in message and not is_root:
        blockers = userns_blockers(proc_sys)
        allow = ", ".join(f"sysctl -w {n}={on}" for n, off, on in USERNS_SYSCTLS if f"{n}={off}" in blockers)
        if blockers:
            return (f"unprivileged user namespaces are disabled ({', '.join(blockers)}); ask the administrators to "
                    f"allow them ({allow}), {rlimit}")
    return f"see docs/sandbox.md, {rlimit}"


@check("sandbox")
def check_sandbox(args: argparse.Namespace) -> list[Finding]:
    """One real cell in the run's sandbox (its backend and preloaded modules, from the run's overrides)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cleaner.sandbox import SandboxUnavailable, check_ready
    from harness import cli, schema

    try:
        config = schema.sandbox_config(cli.composed("train", list(args.overrides)))
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # a Hydra or schema error in the overrides
        return [fail(f"the run's overrides do not compose: {' '.join(str(e).split())}",
                     "correct them (python -m harness.train --cfg job OVERRIDES shows the config)")]
    preloaded = f", preloaded {', '.join(config.preload_modules)}" if config.preload_modules else ""
    try:
        backend = check_ready(config)
    except SandboxUnavailable as e:
        return [fail(f"backend {config.backend}{preloaded}: {e}", sandbox_fix(str(e), config.backend,
                                                                              os.geteuid() == 0))]
    return [ok(f"a cell ran in the {backend} sandbox{preloaded}")]


# --- the run ------------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> list[tuple[str, Finding]]:
    """Every check's findings, in order; a check whose modules do not import fails with that as its finding."""
    findings = []
    for name, fn in CHECKS.items():
        try:
            found = fn(args)
        except ImportError as e:
            found = [fail(f"cannot run: {e}", "run the preflight with the GPU environment's python (in slurm/: "
                          "CLEANER_PYTHON), installed as docs/cluster.md says")]
        findings += [(name, f) for f in found]
    return findings


def schema_default(cls: str, field: str) -> object:
    """The default of `cls.field` in harness/schema.py, read from its source (importing it needs the harness's
    dependencies, which a bare GPU node may lack)."""
    tree = ast.parse((Path(__file__).with_name("schema.py")).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    stmt = next(s for s in node.body if isinstance(s, ast.AnnAssign) and s.target.id == field)
    return ast.literal_eval(stmt.value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.preflight", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__[:__doc__.index("\n\nThis module")],
                                epilog="What each failure means and its fix: docs/cluster.md, Preflight.")
    p.add_argument("--gpus", type=int, default=4, help="GPUs this node must show; 0 skips the count (a login node) "
                                                        "(default: 4, the scripts' one node of 4)")
    p.add_argument("--attn-implementation", choices=ATTENTION_MODULES, default="flash_attention_2",
                   help="the attention verl's actor uses (default: verl's, %(default)s)")
    p.add_argument("--lock", type=Path, default=LOCK, help="the GPU lock the versions come from (default: the "
                                                           "checkout's gpu/requirements.lock)")
    p.add_argument("--model", type=Path, help="the model folder (a Hugging Face checkpoint)")
    p.add_argument("--train", type=Path, help="the training set (Open-AgentRL-30K format)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME[=FILE]",
                   help="a benchmark, with its file or found under CLEANER_DATA_ROOT (repeatable)")
    p.add_argument("--chat-format", default="hermes", help="the chat format the prompts are built for (default: "
                                                           "%(default)s, the paper presets')")
    p.add_argument("--runs", type=Path, default=REPO / "results" / "runs",
                   help="the runs root, where checkpoints go (default: the checkout's results/runs)")
    p.add_argument("--keep-checkpoints", type=int, default=schema_default("VerlSchema", "keep_checkpoints"),
                   help="checkpoints verl keeps, 0 for all (default: verl.keep_checkpoints' default, %(default)s)")
    p.add_argument("--nodes", type=int, default=1, help="nodes in the job (default: %(default)s)")
    p.add_argument("--head-address", help="the address the Ray head listens on (needed with --nodes > 1)")
    p.add_argument("--ray-port", type=int, default=6379, help="the Ray head's port (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=slurm_cpus(),
                   help="the CPUs Ray gets on each node (default: as slurm/common.sh gives `ray start --num-cpus`: "
                        "SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE; now %(default)s)")
    p.add_argument("overrides", nargs="*", help="the run's harness overrides (preset=qwen3_4b ...): the sandbox check "
                                                "starts the sandbox they configure, the layout check translates them")
    return p


def main(argv: list[str] | None = None) -> int:
    findings = run(parser().parse_args(argv))
    for name, f in findings:
        print(f"{f.status:<4}  {name}: {f.text}", flush=True)
    failed = [name for name in CHECKS if any(n == name and f.status == "FAIL" for n, f in findings)]
    print(f"preflight: {len(failed)} of {len(CHECKS)} checks failed: {', '.join(failed)}" if failed
          else f"preflight: no check failed ({len(CHECKS)} checks)", flush=True)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
