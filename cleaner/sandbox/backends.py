"""How one worker's sandbox is started, and what isolation this machine gives.

bwrap (backend "auto" or "bwrap"): one bubblewrap sandbox per worker, holding the zygote (`_zygote.py`). New pid,
network, IPC and UTS namespaces. The file system shows only what cells need, read-only: /usr, /etc, the /bin,
/sbin and /lib* links or directories, the interpreter's installation, `python_paths` and the site-packages of
`preload_modules`; a private /tmp (tmpfs) for scratch directories; a minimal, read-only /dev; the sandbox's own
/proc. Nothing else of the host: not its HOME, /run, /var or /tmp, so none of its unix sockets. Two ways to run it:
- as root: no user namespace; the zygote keeps only the capabilities it needs to manage cells (setuid, setgid,
  kill, chown, DAC override, fowner, and sys_ptrace to read the cells' memory use in /proc), and each session
  (and each worker's one-off cells) runs under its own unprivileged uid, so RLIMIT_NPROC counts exactly that
  session's processes, and a cell can signal neither the zygote nor other sessions, and can write nowhere but its
  own scratch directory. If the interpreter or an import path is not readable by other users, the sandbox
  refuses to start (SandboxUnavailable) rather than run cells as root.
- as another user: an unprivileged user namespace (`--unshare-all`); cells share the user's uid with the zygote,
  so a cell can signal the zygote (it is then restarted and the call reported as `SandboxKilled`), and can write
  to the worker's private /tmp outside its scratch directory (files can then pass between calls on that worker).
Without bubblewrap (or without user namespaces, as on many clusters) the sandbox refuses to start.

rlimit (only when `backend="rlimit"` is set explicitly): the same zygote started bare, with rlimits, the seccomp
filter and the memory limit, but no namespace: cells see the host's file system (with file permissions) and its
network, and their scratch directories have no quota. As root it runs cells under an unprivileged uid, or
refuses; as another user cells run as that user (they can read its files and signal its processes). Starting it
logs a warning that says so.

Memory per call: cgroup v2 where the trainer's cgroup, or its parent, is a writable cgroup v2 directory whose
children get the memory controller (root on a machine with cgroup v2, or a delegated subtree): the pool makes a
cgroup per worker there (a sibling of the trainer's own cgroup: a cgroup that holds processes cannot pass
controllers to children), and the zygote one per call with memory.max (and pids.max where the pids controller is
delegated). Elsewhere (cgroup v1, a container's read-only cgroup file system, a SLURM job) the zygote measures the
call's processes itself every 20 ms (see `_zygote`). The pool's `isolation` says which.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cleaner.sandbox.config import SandboxConfig


ZYGOTE_SOURCE = Path(__file__).with_name("_zygote.py").read_text()
# The whole environment of the sandbox: no secrets, no HOME of the trainer (cells get HOME = their scratch dir).
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_ENV = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
_PRIVILEGED_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER",
                    "CAP_SYS_PTRACE")
_SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_PROBE_TIMEOUT_S = 20.0
CGROUP2_MOUNT = "/sys/fs/cgroup"
CGROUP_IN_SANDBOX = "/run/cleaner/cgroup"  # where a worker's cgroup is mounted for its zygote (cells cannot enter)


class SandboxUnavailable(RuntimeError):
    """The isolation the configuration asks for cannot be had here (bubblewrap missing or failing, or cells that
    would run as root)."""


@dataclass(frozen=True)
class LaunchPlan:
    """How to start one worker: `prefix` (the bwrap command line, or nothing) + the interpreter + the zygote."""

    backend: str  # "bwrap" | "rlimit"
    prefix: tuple[str, ...]
    python: str
    zygote_config: str  # JSON, read by _zygote.main
    cgroup_parent: str | None  # where the pool makes its workers' cgroups; None: the zygote's memory watchdog
    cgroup_reason: str  # why there is no cgroup_parent

    def argv(self, worker_cgroup: str | None = None) -> list[str]:
        """The command line of one worker; with a cgroup, a shell first moves itself (and so the sandbox) into
        the worker's supervisor cgroup, and the zygote is given the worker's cgroup."""
        if worker_cgroup is None:
            return [*self.prefix, self.python, "-I", "-S", "-c", ZYGOTE_SOURCE, self.zygote_config]
        inside = worker_cgroup if self.backend == "rlimit" else CGROUP_IN_SANDBOX
        mount = [] if self.backend == "rlimit" else ["--perms", "0700", "--dir", os.path.dirname(inside),
                                                     "--bind", worker_cgroup, inside]
        prefix = [*self.prefix[:-2], *mount, *self.prefix[-2:]] if self.prefix else []  # before --chdir /tmp
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(worker_cgroup, "supervisor",
                "cgroup.procs"), *prefix, self.python, "-I", "-S", "-c", ZYGOTE_SOURCE, self.zygote_config, inside]


def real_python() -> str:
    """The interpreter binary itself (a venv's python and pyenv shims resolve to it). Run with -I -S, it sees the
    standard library only: none of the trainer's packages, so a cell never imports torch."""
    return os.path.realpath(sys.executable)


def preload_paths(modules: tuple[str, ...]) -> list[str]:
    """The import-path entries (site-packages) this interpreter loads `modules` from, found without importing
    them. The standard library's need no entry."""
    paths: list[str] = []
    for name in modules:
        spec = importlib.util.find_spec(name.split(".")[0])
        if spec is None:
            raise ValueError(f"sandbox.preload_modules: {name!r} is not installed for {sys.executable}")
        if spec.submodule_search_locations:  # a package: the directory that holds it
            locations = [os.path.dirname(p) for p in spec.submodule_search_locations]
        elif spec.origin and os.path.isabs(spec.origin):  # a module file (not a built-in)
            locations = [os.path.dirname(spec.origin)]
        else:
            locations = []
        stdlib = os.path.realpath(os.path.dirname(os.__file__))
        for location in map(os.path.realpath, locations):
            if location != stdlib and not location.startswith(stdlib + "/") and location not in paths:
                paths.append(location)
    return paths


def import_paths(config: SandboxConfig) -> list[str]:
    """Import paths the zygote appends for cells: `python_paths`, then the preloaded modules' site-packages."""
    paths = list(config.python_paths)
    return paths + [p for p in preload_paths(config.preload_modules) if p not in paths]


def needed_paths(config: SandboxConfig) -> list[str]:
    """Directories the sandbox must show besides the system ones: the interpreter's installation and the import
    paths."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    paths.add(os.path.dirname(real_python()))
    for p in import_paths(config):
        if not os.path.isdir(p):
            raise ValueError(f"sandbox.python_paths entry is not a directory: {p}")
        paths.add(os.path.realpath(p))
    # A path inside another one, or inside a system directory, needs no mount of its own.
    system = [d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    return sorted(p for p in paths if not any(p == s or p.startswith(s + "/") for s in system)
                  and not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths))


def _others_can_read(path: str) -> bool:
    return os.stat(path).st_mode & 0o005 == 0o005


def _others_can_enter_all(path: str) -> bool:
    return all(os.stat(a).st_mode & 0o001 for a in [path, *map(str, Path(path).parents)])


def _mount_args(needed: list[str]) -> list[str]:
    """bubblewrap arguments for the file system cells see (module docstring). The private /tmp is mounted before
    the needed paths, so that an installation or import path under the host's /tmp (a virtual environment in a
    temporary folder) is bound on top of it rather than hidden by it."""
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--tmpfs", "/tmp"]
    made: set[str] = {"/tmp"}
    for path in needed:
        for parent in map(str, reversed(Path(path).parents[:-1])):  # from the top, "/" excluded
            if parent not in made:  # enterable by the cells' uids, whatever the host's directory allows
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
    return args + ["--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc"]


def bwrap_prefix(bwrap: str, privileged: bool, needed: list[str], unshare_cgroup: bool) -> list[str]:
    if privileged:
        namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        namespaces += ["--unshare-cgroup-try"] if unshare_cgroup else []
    else:
        namespaces = ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        namespaces += ["--unshare-cgroup-try"] if unshare_cgroup else []
    args = [bwrap, *namespaces, "--die-with-parent", "--new-session", *_mount_args(needed)]
    if privileged:
        args += ["--cap-drop", "ALL"]
        for cap in _PRIVILEGED_CAPS:
            args += ["--cap-add", cap]
    return args + ["--chdir", "/tmp"]


@functools.lru_cache(maxsize=16)
def probe(prefix: tuple[str, ...], python: str) -> str | None:
    """Start the interpreter under `prefix` once; None when it works, else what went wrong."""
    try:
        proc = subprocess.run([*prefix, python, "-I", "-S", "-c", "print('sandbox-ok')"], env=SANDBOX_ENV,
                              capture_output=True, timeout=_PROBE_TIMEOUT_S, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{prefix[0]} could not run: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != b"sandbox-ok":
        err = proc.stderr.decode(errors="replace").strip()
        return f"{prefix[0]} failed (exit {proc.returncode}): {err[-500:]}"
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.path.normpath(CGROUP2_MOUNT + line[3:].strip())
    except OSError:
        pass
    return None


def cgroup_parent() -> tuple[str | None, str]:
    """A cgroup v2 directory in which the pool may make its workers' cgroups with the memory controller: the
    trainer's own cgroup or its parent, if writable and passing `memory` to its children. Else None, and why."""
    own = _own_cgroup()
    if own is None or not os.path.exists(os.path.join(CGROUP2_MOUNT, "cgroup.controllers")):
        return None, "cgroup v2 is not mounted at /sys/fs/cgroup"
    for candidate in (own, os.path.dirname(own)):
        try:
            with open(os.path.join(candidate, "cgroup.subtree_control")) as f:
                passed = f.read().split()
        except OSError:
            continue
        if "memory" in passed and os.access(candidate, os.W_OK):
            return candidate, ""
    return None, (f"neither the trainer's cgroup {own} nor its parent is a writable cgroup v2 directory that passes "
                  "the memory controller to its children")


class CgroupTree:
    """The pool's cgroups: parent/cleaner-sandbox-<id>/w<i>/{supervisor, holders, call-N}. Removed by `remove`
    (left, empty, if the trainer is killed)."""

    def __init__(self, parent: str):
        self.root = os.path.join(parent, f"cleaner-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.mkdir(self.root)
        self._pass_controllers(self.root)

    @staticmethod
    def _pass_controllers(path: str) -> None:
        with open(os.path.join(path, "cgroup.controllers")) as f:
            available = f.read().split()
        with open(os.path.join(path, "cgroup.subtree_control"), "w") as f:
            f.write(" ".join(f"+{c}" for c in ("memory", "pids") if c in available))

    def worker(self, index: int) -> str:
        """A fresh cgroup for worker `index` (what a previous start left is removed)."""
        path = os.path.join(self.root, f"w{index}")
        self._remove_tree(path)
        os.mkdir(path)
        self._pass_controllers(path)
        for child in ("supervisor", "holders"):
            os.mkdir(os.path.join(path, child))
        return path

    def remove(self) -> None:
        self._remove_tree(self.root)

    @staticmethod
    def _remove_tree(path: str) -> None:
        """Remove a cgroup and those below it, deepest first; a cgroup whose last process is still exiting is
        busy for a moment."""
        if not os.path.isdir(path):
            return
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
            for attempt in range(100):
                try:
                    os.rmdir(dirpath)
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or attempt == 99:
                        raise
                    time.sleep(0.01)


def _zygote_config(config: SandboxConfig, scratch_root: str, drop_uid: bool, scratch_quota: bool) -> str:
    return json.dumps({
        "timeout_s": config.timeout_s,
        "cpu_time_s": config.cpu_time_s,
        "memory_bytes": config.memory_mb << 20,
        "max_output_bytes": config.max_output_bytes,
        "max_processes": config.max_processes,
        "max_open_files": config.max_open_files,
        "max_file_bytes": config.max_file_bytes,
        "scratch_bytes": config.max_scratch_mb << 20 if scratch_quota else None,
        "python_paths": import_paths(config),
        "preload_modules": list(config.preload_modules),
        "path": SANDBOX_PATH,
        "scratch_root": scratch_root,
        "drop_uid": drop_uid,
        "die_with_parent": True,
    })


def plan(config: SandboxConfig, scratch_root: str | None = None) -> LaunchPlan:
    """The launch plan for `config` on this machine, or SandboxUnavailable with every reason. Probes bubblewrap
    (cached per process). `scratch_root`: for rlimit, the host directory that holds the workers' scratch roots."""
    if config.backend == "remote":
        raise ValueError("backend 'remote' has no local launch plan; use cleaner.sandbox.open_pool")
    python = real_python()
    needed = needed_paths(config)
    is_root = os.geteuid() == 0
    parent, cgroup_reason = cgroup_parent()
    if config.backend == "rlimit":
        if is_root and not all(_others_can_read(p) and _others_can_enter_all(p) for p in needed):
            raise SandboxUnavailable(
                "backend 'rlimit' runs cells under an unprivileged uid when started as root, but these paths are "
                f"not readable by other users: {', '.join(p for p in needed if not _others_can_enter_all(p))}. "
                "Use bubblewrap (backend 'auto'), or an interpreter and packages other users can read.")
        return LaunchPlan("rlimit", (), python, _zygote_config(config, scratch_root or "", is_root, False),
                          parent, cgroup_reason)
    bwrap = shutil.which(config.bwrap_path)
    if bwrap is None:
        raise SandboxUnavailable(
            f"bubblewrap not found (sandbox.bwrap_path={config.bwrap_path!r}). Install it (e.g. `apt-get install "
            "bubblewrap`) and allow user namespaces, or set sandbox.backend='rlimit' to run cells without "
            "namespace isolation (they then see the host's files and network).")
    if is_root and not all(_others_can_read(p) for p in needed):
        raise SandboxUnavailable(
            "as root, cells run under an unprivileged uid, but these directories are not readable by other users: "
            f"{', '.join(p for p in needed if not _others_can_read(p))}")
    prefix = tuple(bwrap_prefix(bwrap, is_root, needed, unshare_cgroup=parent is None))
    error = probe(prefix, python)
    if error is not None:
        raise SandboxUnavailable(
            f"bubblewrap cannot start a sandbox here: {error}. "
            + ("" if is_root else "Unprivileged user namespaces may be disabled (kernel.unprivileged_userns_clone, "
               "user.max_user_namespaces). ")
            + "Set sandbox.backend='rlimit' to run cells without namespace isolation.")
    return LaunchPlan("bwrap", prefix, python, _zygote_config(config, "/tmp", is_root, True), parent, cgroup_reason)
