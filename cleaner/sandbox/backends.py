"""How one worker's sandbox is started, and which backend works on this machine.

bwrap: one bubblewrap sandbox per worker, holding the zygote (`_zygote.py`). New pid, network, IPC and UTS
namespaces; the whole file system read-only; a private size-limited tmpfs on /tmp for scratch directories; the
trainer's HOME, and any directory other users cannot enter, hidden under empty tmpfs mounts (the interpreter's
own directories are mounted back read-only). Two ways to run it:
- as root: no user namespace, the zygote keeps only the capabilities it needs to manage cells (setuid, setgid,
  kill, chown, DAC override, fowner), and each session (and each worker's one-off cells) runs under its own
  unprivileged uid. So RLIMIT_NPROC counts exactly that session's processes, a cell cannot signal the zygote or
  other sessions, and it can write nowhere but its own scratch directory.
- as another user: an unprivileged user namespace (`--unshare-all`); cells share the user's uid with the zygote,
  so a cell can signal the zygote (it is then restarted and the call reported as `SandboxKilled`), and can write
  to the sandbox's private /tmp (discarded with the sandbox), not only to its scratch directory.

rlimit (fallback): the same zygote started bare, with rlimits only. It does NOT block the network, and the file
system is protected only by file permissions: cells run as the trainer's user, or, when the trainer is root and
the interpreter is readable by others, under an unprivileged uid of their own. Another process of the same user
can be read through /proc (environment, memory). Choosing it logs a warning; `strict=True` refuses it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cleaner.sandbox.config import SandboxConfig


ZYGOTE_SOURCE = Path(__file__).with_name("_zygote.py").read_text()
# The whole environment of the sandbox: no secrets, no HOME of the trainer (cells get HOME = their scratch dir).
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_ENV = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}
_PRIVILEGED_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
_PROBE_TIMEOUT_S = 20.0


class SandboxUnavailable(RuntimeError):
    """Namespace isolation was required (strict, or backend 'bwrap') but cannot be had here."""


@dataclass(frozen=True)
class LaunchPlan:
    """How to start one worker: `prefix` (the bwrap command line, or nothing) + the interpreter + the zygote."""

    backend: str  # "bwrap" | "rlimit"
    prefix: tuple[str, ...]
    python: str
    zygote_config: str  # JSON, read by _zygote.main
    reason: str  # for rlimit: why bwrap was not used

    def argv(self) -> list[str]:
        return [*self.prefix, self.python, "-I", "-S", "-c", ZYGOTE_SOURCE, self.zygote_config]


def real_python() -> str:
    """The interpreter binary itself (a venv's python and pyenv shims resolve to it). Run with -I -S, it sees the
    standard library only: none of the trainer's packages, so a cell never imports torch."""
    return os.path.realpath(sys.executable)


def needed_paths(config: SandboxConfig) -> list[str]:
    """Directories the sandbox must show: the interpreter's installation and the configured import paths."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    paths.add(os.path.dirname(real_python()))
    for p in config.python_paths:
        if not os.path.isdir(p):
            raise ValueError(f"sandbox.python_paths entry is not a directory: {p}")
        paths.add(os.path.realpath(p))
    # A path inside another one needs no mount of its own.
    return sorted(p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths))


def _others_can_enter(path: str) -> bool:
    return bool(os.stat(path).st_mode & 0o001)


def _others_can_read(path: str) -> bool:
    return os.stat(path).st_mode & 0o005 == 0o005


def hidden_dirs(needed: list[str], home: str | None) -> list[str]:
    """Directories to cover with an empty tmpfs: the trainer's HOME, and the top-most ancestor of each needed path
    that other users cannot enter (so that cells under another uid can still reach the interpreter)."""
    hidden = set()
    if home and os.path.isdir(home) and os.path.realpath(home) != "/":
        hidden.add(os.path.realpath(home))
    for path in needed:
        for ancestor in reversed(list(Path(path).parents)[:-1]):  # from the top, "/" excluded
            if not _others_can_enter(str(ancestor)):
                hidden.add(str(ancestor))
                break
    return sorted(h for h in hidden if not any(h != o and h.startswith(o + "/") for o in hidden))


def _mount_args(needed: list[str], hidden: list[str]) -> list[str]:
    args: list[str] = []
    for h in hidden:
        args += ["--tmpfs", h]
    made: set[str] = set()
    for path in needed:
        cover = [h for h in hidden if path == h or path.startswith(h + "/")]
        if not cover:
            continue
        for parent in reversed(Path(path).parents):
            p = str(parent)
            if p.startswith(cover[0] + "/") and p not in made:
                args += ["--perms", "0755", "--dir", p]
                made.add(p)
        args += ["--ro-bind", path, path]
    for h in hidden:
        args += ["--remount-ro", h]
    return args


def bwrap_prefix(bwrap: str, config: SandboxConfig, privileged: bool, needed: list[str],
                 hidden: list[str]) -> list[str]:
    if privileged:
        namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        namespaces = ["--unshare-all"]
    args = [bwrap, *namespaces, "--die-with-parent", "--new-session",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--size", str(config.max_scratch_mb << 20), "--tmpfs", "/tmp",
            *_mount_args(needed, hidden)]
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


def _zygote_config(config: SandboxConfig, scratch_root: str | None, drop_uid: bool) -> str:
    return json.dumps({
        "timeout_s": config.timeout_s,
        "cpu_time_s": config.cpu_time_s,
        "memory_bytes": config.memory_mb << 20,
        "max_output_bytes": config.max_output_bytes,
        "max_processes": config.max_processes,
        "max_open_files": config.max_open_files,
        "max_file_bytes": config.max_file_bytes,
        "python_paths": list(config.python_paths),
        "path": SANDBOX_PATH,
        "scratch_root": scratch_root,
        "drop_uid": drop_uid,
        "die_with_parent": True,
    })


def plan(config: SandboxConfig) -> LaunchPlan:
    """The backend to use for `config` on this machine. Probes bubblewrap (cached per process); raises
    SandboxUnavailable when isolation is required and missing, else falls back to rlimit with a warning."""
    if config.backend == "remote":
        raise ValueError("backend 'remote' has no local launch plan; use cleaner.sandbox.open_pool")
    python = real_python()
    needed = needed_paths(config)
    is_root = os.geteuid() == 0
    failures: list[str] = []
    if config.backend in ("auto", "bwrap"):
        bwrap = shutil.which(config.bwrap_path)
        if bwrap is None:
            failures.append(f"bubblewrap not found (sandbox.bwrap_path={config.bwrap_path!r})")
        else:
            hidden = hidden_dirs(needed, os.path.expanduser("~"))
            for privileged in ([True, False] if is_root else [False]):
                prefix = tuple(bwrap_prefix(bwrap, config, privileged, needed, hidden))
                error = probe(prefix, python)
                if error is None:
                    drop_uid = privileged and all(_others_can_read(p) for p in needed)
                    return LaunchPlan("bwrap", prefix, python, _zygote_config(config, "/tmp", drop_uid), "")
                failures.append(error)
        if config.backend == "bwrap" or config.strict:
            raise SandboxUnavailable(
                "namespace isolation is unavailable: " + "; ".join(failures)
                + ". Install bubblewrap (e.g. `apt-get install bubblewrap`) and allow user namespaces, or run "
                "with sandbox.strict=False to accept the rlimit-only fallback.")
    reason = "; ".join(failures) or "backend 'rlimit' requested"
    drop_uid = is_root and all(
        _others_can_read(p) and all(_others_can_enter(str(a)) for a in Path(p).parents) for p in needed)
    return LaunchPlan("rlimit", (), python, _zygote_config(config, None, drop_uid), reason)
