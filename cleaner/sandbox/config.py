"""Settings of the sandbox: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "bwrap", "rlimit", "remote")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and backend of the Python executor. Every limit is enforced from outside the model's code: by the
    supervisor process (wall clock, output size, memory of a call, scratch quota, clean-up) or by the kernel
    (rlimits, cgroup v2 where delegated, namespaces, seccomp). Frozen and hashable (a dict key of the verl
    plugin's pools)."""

    # wall-clock limit per cell, then all its processes are SIGKILLed ("4 s per execution" in the paper)
    timeout_s: float = 4.0
    # CPU-time limit per process of a cell (RLIMIT_CPU, rounded up to whole seconds); None: timeout_s
    cpu_time_s: float | None = None
    # memory of a call, all its processes and the files it adds to its scratch directory together (cgroup v2
    # memory.max, else the supervisor's watchdog), and the address space of each process (RLIMIT_AS); 2048 as
    # DemyAgent's tool_memory_mb
    memory_mb: int = 2048
    # stdout + stderr bytes a cell may write; beyond it the cell is stopped with status `output_limit`
    max_output_bytes: int = 1 << 20
    # RLIMIT_NPROC: processes and threads a cell may have, itself included (exact only with a uid per cell)
    max_processes: int = 64
    # RLIMIT_NOFILE per process
    max_open_files: int = 256
    # RLIMIT_FSIZE: the largest file a cell may write
    max_file_bytes: int = 16 << 20
    # bwrap: what a session (or a one-off call) may keep in its scratch directory, bytes plus 1 KiB per file;
    # beyond it the call is stopped (memory_limit) and the directory emptied
    max_scratch_mb: int = 256
    # "auto" = "bwrap" (refuses to start, SandboxUnavailable, where bubblewrap cannot run) | "rlimit" (no namespace
    # isolation: only on explicit request) | "remote"
    backend: str = "auto"
    # cells that run at the same time, one sandbox each; None: os.cpu_count()
    workers: int | None = None
    # the bubblewrap executable: a name looked up on PATH, or a path
    bwrap_path: str = "bwrap"
    # extra import paths for model code, mounted read-only; default: the standard library only
    python_paths: tuple[str, ...] = ()
    # modules imported once in each worker's supervisor, so that a cell's `import` costs nothing, e.g.
    # ("numpy", "sympy"), as the paper's executor; the site-packages they come from are mounted read-only and on
    # the cells' import path (so everything installed there is importable). Default: none (standard library only)
    preload_modules: tuple[str, ...] = ()
    # backend "remote": base URL of a SandboxFusion server
    remote_url: str | None = None
    # backend "remote": HTTP time-out added to timeout_s for one request
    remote_request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "python_paths", tuple(self.python_paths))
        object.__setattr__(self, "preload_modules", tuple(self.preload_modules))
        if self.cpu_time_s is None:
            object.__setattr__(self, "cpu_time_s", self.timeout_s)
        positive = {
            "timeout_s": self.timeout_s,
            "cpu_time_s": self.cpu_time_s,
            "memory_mb": self.memory_mb,
            "max_output_bytes": self.max_output_bytes,
            "max_processes": self.max_processes,
            "max_open_files": self.max_open_files,
            "max_file_bytes": self.max_file_bytes,
            "max_scratch_mb": self.max_scratch_mb,
            "remote_request_timeout_s": self.remote_request_timeout_s,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox.{name} must be a positive number, got {value!r}")
        if self.memory_mb < 64:
            raise ValueError(f"sandbox.memory_mb must be at least 64 (the interpreter itself needs it), "
                             f"got {self.memory_mb}")
        if self.max_open_files < 16:
            raise ValueError(f"sandbox.max_open_files must be at least 16, got {self.max_open_files}")
        if self.max_processes < 2:
            raise ValueError(f"sandbox.max_processes must be at least 2 (a cell and its holder), "
                             f"got {self.max_processes}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown sandbox.backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise ValueError(f"sandbox.workers must be >= 1 or None, got {self.workers!r}")
        if self.backend == "remote" and not self.remote_url:
            raise ValueError("sandbox.backend='remote' needs sandbox.remote_url (a SandboxFusion server)")
        for path in self.python_paths:
            if not path.startswith("/"):
                raise ValueError(f"sandbox.python_paths must be absolute paths, got {path!r}")
        for name in self.preload_modules:
            if not (isinstance(name, str) and all(part.isidentifier() for part in name.split("."))):
                raise ValueError(f"sandbox.preload_modules must be module names such as 'numpy', got {name!r}")
