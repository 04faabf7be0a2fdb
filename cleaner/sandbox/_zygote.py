"""The supervisor inside one sandbox: it forks a process per cell, enforces every limit from outside it, and alone
decides each call's result.

The trainer imports only its /proc readers (`_stat`, `_children`, for the pool's own sweep). Its source is passed to
a fresh interpreter started as `python -I -S -c <source> <config json> [<cgroup dir>]` (inside bubblewrap, or bare
for the rlimit backend), so it uses the standard library only (plus the modules the config asks it to preload,
imported once here so that cells share them copy-on-write): every cell is a fork of this process's template.

Process tree of one worker::

    zygote (this file; PR_SET_CHILD_SUBREAPER, so orphans come back to it)
    |-- template    forked before the first request; forks every one-off cell and every session's first holder
    |               (as the zygote's children: _fork_sibling)
    |-- cell        a one-off call: forked by the template, supervised by the zygote, discarded afterwards
    |-- holder      one per session, FROZEN (SIGSTOP) between calls: a process whose memory is the session's state
    |-- rm          the remover of ended calls' scratch directories (nice 19), frozen while a call runs
    `-- ...         nothing else survives a call: the sweep kills every other descendant

A session's call: the zygote thaws the session's holder H (the call's clock starts here: everything H does counts
against timeout_s) and sends it the cell. H forks a backup B (the state before the cell), reports it and waits;
the zygote checks that B is H's own child and waits for the zygote (below), freezes it and says go. H then becomes
the cell: it runs the model's code as the zygote's own child, so the zygote sees its exit status and CPU time. A
cell that succeeds forks a successor S (the state after the cell, a fresh process: no CPU time, no threads),
reports it and exits; S, checked to be the cell's child in the cell's process group and waiting for the zygote, is
frozen and becomes the holder, and B is killed. A cell that fails leaves B as the holder. The go is sent only to
an H that waits for it alone (below); from the go to its report, the cell runs only code out of the reach of the
session's earlier cells (see "Running and judging a cell" below). "Waiting for the zygote"
(`_waiting_for_zygote`): one thread, blocked receiving on the socket the zygote gave it, and not dumpable; a
process the model made run code of its own is never kept. So holders run no code between calls, a session's
state is that of its successful cells only, and nothing is replayed. While the call runs, its memory includes B's.

Trust. The zygote and the template never run model code, and the template never holds a request's code or a
reply's output, so no cell inherits another call's data in its memory. Cells, holders, backups and successors are
untrusted: their memory may have been changed by model code. The zygote sends them nothing it needs back except
through channels with a deadline, accepts a pid only after checking its parent, process group and uid, and decides
the verdict itself:
- what it observed comes first: the wall clock (timeout_s), the output cap, the memory of the call's processes
  (cgroup v2, or its own watchdog), the scratch quota, death by a signal, the CPU limit, the exit status;
- "ok" requires a clean exit (status 0) that it saw, after exactly one well-formed report from the cell;
- a report only says what a script can choose (whether it ended with an exception, and the exception's class
  name); its fields are checked (type, length, `error_type` a Python identifier) and anything else is the
  cell's fault: status `error`, error_type `SandboxProtocolError`.
Every event is classified (unknown signals, garbage, stalls); a fault of the zygote's own is logged to the
trainer and charged to the call that caused it, without touching other sessions.

Kernel-side limits set before model code runs, which a cell cannot raise: RLIMIT_AS (per process), RLIMIT_CPU,
RLIMIT_FSIZE, RLIMIT_NPROC (exact with a uid per session), RLIMIT_NOFILE, RLIMIT_CORE = 0; a seccomp filter
(x86-64, aarch64) that refuses SysV IPC, POSIX message queues, kernel keyrings, memfds, ptrace and cross-process
memory access, new namespaces and new sockets (EPERM), so none of them can outlive a call or hide memory from the
limit, and no call or session can reach another over a socket.

Scratch directories of ended calls (and closed sessions) are renamed at once into a trash directory only the
zygote can enter, and removed by a background `rm` between calls: no later call can read them, and no request
waits for a large tree to be removed.

Protocol with the trainer: length-prefixed JSON messages on the zygote's stdin/stdout (moved to private file
descriptors at start). Requests: {"op": "run", "code", "filename", "session"}, {"op": "open"|"close", "session"},
{"op": "fork", "session", "new"}, {"op": "exit"}; every request but exit gets exactly one reply.
"""

import _io
import _signal
import _socket
import builtins
import ctypes
import errno
import gc
import json
import linecache
import marshal
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import types

_HEADER = struct.Struct(">I")
_MAX_REPORT_BYTES = 1 << 12  # a cell's or holder's message is a few dozen bytes; more is a broken process
_MAX_ERROR_TYPE_CHARS = 128
_REPORTED_STATUSES = ("ok", "error", "memory_limit")
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_LIBC = ctypes.CDLL(None, use_errno=True)
_PYTHON_LIBC = ctypes.PyDLL(None, use_errno=True)  # the C library, called without releasing the GIL
_SWEEP_ROUNDS = 1000
_MAX_FD = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # no fd of ours can be above it
if _MAX_FD == resource.RLIM_INFINITY:
    _MAX_FD = 1 << 20
_GRACE_S = 2.0  # how long a holder may take for a control step (fork, answer), beyond which its session is reset;
# within the call's timeout_s: the call's clock runs from the thaw of its holder
_SETTLE_S = 0.1  # how long a cell's successor may take to wait for the zygote after the cell ended
_RECVMSG = {"x86_64": 47, "aarch64": 212}.get(os.uname().machine)  # the syscall a waiting holder is blocked in
_TICK_S = 0.02  # how often the zygote measures a running call's memory and scratch files
_INODE_BYTES = 1024  # what one file in a scratch directory costs the kernel, charged to the scratch quota
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _prctl(option, value):
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# ---------------------------------------------------------------------------------------------------------------
# Framing: a 4-byte big-endian length, then UTF-8 JSON (marshal for what the zygote sends its own processes:
# _encode_private). The trainer is trusted (blocking reads); everything a cell or holder sends is read with a
# deadline, a size cap and a check of its content.


def _encode(obj):
    data = json.dumps(obj).encode()
    return _HEADER.pack(len(data)) + data


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_message(fd):
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def _one_frame(buf):
    """The message in `buf` if it holds exactly one well-formed frame whose body is a JSON object, else None
    (nothing, a partial frame, two frames, garbage)."""
    if len(buf) < _HEADER.size or len(buf) != _HEADER.size + _HEADER.unpack(bytes(buf[:_HEADER.size]))[0]:
        return None
    try:
        msg = json.loads(bytes(buf[_HEADER.size:]))
    except (ValueError, RecursionError):  # invalid UTF-8 or JSON, or nesting deep enough to exhaust the parser
        return None
    return msg if isinstance(msg, dict) else None


def _valid_report(msg):
    """A cell's report if its fields are what a cell may report, else None."""
    if msg is None or set(msg) - {"status", "error_type", "holder"}:
        return None
    status, error_type, holder = msg.get("status"), msg.get("error_type"), msg.get("holder")
    if not (isinstance(status, str) and status in _REPORTED_STATUSES):
        return None
    if (status == "error") != (error_type is not None):
        return None
    if error_type is not None and not (isinstance(error_type, str) and error_type.isidentifier()
                                       and len(error_type) <= _MAX_ERROR_TYPE_CHARS):
        return None
    if holder is not None and not (type(holder) is int and holder > 1):
        return None
    return msg


def _wait_fd(fd, events, deadline):
    """Whether `fd` is ready for `events` before `deadline` (poll, not select: fd numbers may exceed 1024)."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))


def _send(sock, message, fds, deadline):
    """Send one encoded message (and file descriptors) to an untrusted holder without ever blocking past
    `deadline`. False if it could not be sent in time (the holder stopped reading, closed its end, or is frozen)."""
    data = memoryview(message)
    sock.setblocking(False)
    try:
        while data:
            if not _wait_fd(sock, select.POLLOUT, deadline):
                return False
            sent = socket.send_fds(sock, [data], fds) if fds else sock.send(data)
            data, fds = data[sent:], []
        return True
    except OSError:
        return False


def _recv(sock, deadline):
    """One message from an untrusted holder, or None if it closed, stalled past `deadline` or sent garbage."""
    buf = bytearray()
    want = _HEADER.size
    sock.setblocking(False)
    while len(buf) < want:
        if not _wait_fd(sock, select.POLLIN, deadline):
            return None
        try:
            chunk = sock.recv(want - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
        if len(buf) == _HEADER.size:
            want += _HEADER.unpack(bytes(buf))[0]
            if want > _HEADER.size + _MAX_REPORT_BYTES:
                return None
    return _one_frame(buf)


# ---------------------------------------------------------------------------------------------------------------
# The seccomp filter, installed once in the zygote (so every cell inherits it and none can remove it). Refused with
# EPERM: SysV IPC, POSIX message queues and keyrings (kernel objects that outlive a process), memfd_create (memory
# outside any file system or mapping the limits see), ptrace and process_vm_* (another process's memory), unshare,
# setns and clone with a namespace flag (a namespace of the cell's own), and socket(): all sessions and one-off calls
# of a worker share its network namespace (its loopback and abstract unix socket names), so any socket a cell could
# bind or connect is a channel to another trajectory. socketpair() stays (an unnamed pair, reachable only through
# its own fds: asyncio and multiprocessing use it), and so do the socketpairs the zygote hands its holders. A
# namespace per session instead would need CAP_SYS_ADMIN in the zygote and cost a network namespace per session;
# the sandbox has no network to offer anyway. clone3 gets ENOSYS, so that the C library
# falls back to clone, whose flags the filter can read. Other architectures run without the filter (the hello
# says so).

_SYSCALLS = {  # name: (x86-64 number, aarch64 number)
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197),
    "semget": (64, 190), "semop": (65, 193), "semctl": (66, 191), "semtimedop": (220, 192),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
    "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182), "mq_timedreceive": (243, 183),
    "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "memfd_create": (319, 279), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "unshare": (272, 97), "setns": (308, 268),
    "socket": (41, 198),
}
_CLONE = (56, 220)
_CLONE3 = (435, 435)
_AUDIT_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}
_CLONE_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET


def _seccomp_program(machine):
    """The filter as BPF bytes for `machine`, or None where it is not supported."""
    if machine not in _AUDIT_ARCH:
        return None
    column, audit_arch = _AUDIT_ARCH[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    # (code, jump if true, jump if false, k); a string jump names one of the three returns at the end
    program = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, eperm), (ld, 0, 0, 0)]  # foreign arch: refuse
    if machine == "x86_64":
        program.append((jge, "EPERM", 0, 0x40000000))  # the x32 ABI
    program += [(jeq, "EPERM", 0, numbers[column]) for numbers in _SYSCALLS.values()]
    program += [(jeq, "ENOSYS", 0, _CLONE3[column]), (jeq, 0, "ALLOW", _CLONE[column]),
                (ld, 0, 0, 16), (jset, "EPERM", "ALLOW", _CLONE_NAMESPACE_FLAGS)]  # clone's flags, low 32 bits
    labels = {"ALLOW": len(program), "EPERM": len(program) + 1, "ENOSYS": len(program) + 2}
    program += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    out = b""
    for i, (code, jt, jf, k) in enumerate(program):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("HBBI", code, jt, jf, k)
    return out


def _install_seccomp():
    """Install the filter in this process (needs PR_SET_NO_NEW_PRIVS). Returns whether it is installed."""
    program = _seccomp_program(os.uname().machine)
    if program is None:
        return False

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    if _LIBC.prctl(_PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0) != 0:  # 2: SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"installing the seccomp filter: {os.strerror(err)}")
    return True


# ---------------------------------------------------------------------------------------------------------------
# Process bookkeeping through /proc: the call's processes, their memory, the sweep.


def _children(pid, single_thread=False):
    out = []
    try:
        tids = [pid] if single_thread else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def _stat(pid):
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


_PF_EXITING = 0x4  # in the flags field of /proc/<pid>/stat
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)  # in the SigPnd/ShdPnd masks of /proc/<pid>/status


def _frozen(pid):
    """Whether `pid` sleeps (stopped, or blocked in a call) with no SIGKILL pending and is not exiting."""
    fields = _stat(pid)
    if fields is None or fields[0] not in (b"T", b"t", b"S") or int(fields[6]) & _PF_EXITING:
        return False
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            pending = [int(line.split()[1], 16) for line in f if line.startswith((b"SigPnd:", b"ShdPnd:"))]
    except OSError:
        return False
    return len(pending) == 2 and not any(mask & _SIGKILL_BIT for mask in pending)


def _real_uid(pid):
    """The real uid of `pid` (from status: /proc/<pid> itself is root's for a non-dumpable process), or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _is_zombie(pid):
    fields = _stat(pid)
    return fields is None or fields[0] in (b"Z", b"X")


def _processes(me, spared, descend):
    """The descendants of `me` (this process, which has one thread), without `spared` and their subtrees, except
    that the subtrees of `descend` (spared processes of the call's own session) are searched too."""
    out, stack = [], [me]
    while stack:
        pid = stack.pop()
        for child in _children(pid, single_thread=pid == me):
            if child not in spared:
                out.append(child)
                stack.append(child)
            elif child in descend:
                stack.append(child)
    return out


def _rss_bytes(pids):
    """The resident sizes of `pids` added up: cheap, and an upper bound of their memory (shared pages count once
    per process)."""
    rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss += int(f.read().split()[1]) * _PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue
    return rss


def _pss_bytes(pids):
    """The memory of `pids` together: their proportional set sizes (a page shared by n processes counts 1/n to
    each) and swap, added up. Exact for the call's processes, at the cost of a walk of their page tables."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith((b"Pss:", b"SwapPss:")):
                        total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def _reap():
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill(pidfd):
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_group(pgid):
    """SIGKILL a process group at once (a fork bomb cannot outrun it: a process with a pending SIGKILL cannot
    fork); the sweep then finds what left the group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(sig):
    """`SIGSEGV` for a signal Python can name, else `SIG<n>` (real-time signals 32-63): never raises."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


# ---------------------------------------------------------------------------------------------------------------
# The cell: what a process does before, during and after running model code.


def _fresh_main_module():
    """A new `__main__` whose namespace the cells run in, so model code behaves as a script's top level."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main.__dict__


def _close_fds_except(keep):
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


def _tasks_of_uid(uid):
    """Processes and threads the kernel counts against RLIMIT_NPROC for `uid` (in this pid namespace)."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                continue
    return count


def _use_scratch(scratch):
    """Make `scratch` the cell's working directory, HOME, TMPDIR and first import path (as for a script). Run
    before every cell: a session's copy (Session.fork) has a scratch directory of its own."""
    os.chdir(scratch)
    os.environ.update({"HOME": scratch, "TMPDIR": scratch})  # the rest is the zygote's minimal environment
    tempfile.tempdir = None
    sys.path[:] = [scratch] + [p for p in sys.path if p not in _SCRATCH and p != scratch]
    _SCRATCH[:] = [scratch]


_BASE_PATH = []  # the zygote's sys.path
_SCRATCH = []  # the scratch directory this process put first on sys.path


def _enter_cell_process(cfg, uid, scratch, keep_fds, nproc_limit, cgroup_procs):
    """Turn a process just forked by the zygote into a confined one: own process group, cgroup, limits,
    unprivileged uid, scratch directory, minimal environment, no other file descriptors. For one-off cells and a
    session's first holder; the rest of a session's processes inherit all of it."""
    os.setpgid(0, 0)
    if cgroup_procs is not None:
        with open(cgroup_procs, "w") as f:
            f.write("0")
    _close_fds_except(keep_fds)
    cpu_soft = int(cfg["cpu_time_s"] + 0.999)
    limits = [
        (resource.RLIMIT_AS, cfg["memory_bytes"]),
        (resource.RLIMIT_FSIZE, cfg["max_file_bytes"]),
        (resource.RLIMIT_NOFILE, cfg["max_open_files"]),
        (resource.RLIMIT_CORE, 0),
        # Soft limit sends SIGXCPU (reported as a time-out); the hard limit one second later is a SIGKILL.
        (resource.RLIMIT_CPU, (cpu_soft, cpu_soft + 1)),
        (resource.RLIMIT_NPROC, nproc_limit),
    ]
    for which, value in limits:
        resource.setrlimit(which, value if isinstance(value, tuple) else (value, value))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # which makes the process non-dumpable: its /proc files are root's
    else:
        _prctl(_PR_SET_DUMPABLE, 1)  # undo the zygote's own setting, so that it can read the cell's memory use
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    sys.argv = [""]
    sys.path[:] = list(_BASE_PATH)
    _SCRATCH[:] = []
    _use_scratch(scratch)


def _detach_std_streams():
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _print_exception(exc, skip_frames):
    tb = exc.__traceback__
    for _ in range(skip_frames):
        tb = tb.tb_next if tb is not None else None
    try:
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting; keep the last line at least
        os.write(2, f"{type(exc).__name__}\n".encode())


def _join_threads():
    """Wait for the cell's non-daemon threads, as the interpreter does at the end of a script (the time limit
    still applies). Daemon threads are abandoned, as at interpreter exit."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            try:
                thread.join()
            except BaseException:  # noqa: BLE001 - a thread the model broke; do not wait for it
                pass


def _finish_streams():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the model may have closed or replaced them
            pass


def _after_cell(caught, code, filename):
    """What follows a cell, as at the end of a script: its traceback on stderr, its threads joined, its streams
    flushed. This may run code the model changed (the traceback module, a thread), so for a cell that failed it
    runs only once the failure is reported."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # for this and later tracebacks
    if caught is not None:
        if isinstance(caught, SystemExit):
            try:
                print(f"SystemExit: {caught.code}", file=sys.stderr)
            except BaseException:  # noqa: BLE001 - a code whose str() raises, or a broken stderr
                os.write(2, b"SystemExit\n")
        else:
            _print_exception(caught, 1)
    _join_threads()
    _finish_streams()


# ---------------------------------------------------------------------------------------------------------------
# Running and judging a cell where the model's earlier code cannot reach.
#
# A session's cell runs in a process its session's earlier cells ran in. They may have replaced builtins, patched
# any module, left signal handlers, timers, gc callbacks or garbage with finalizers, or walked the frames to the
# code below and rewritten this module's globals. So from the zygote's "go" until the cell's report is written,
# a holder runs only the functions from here to _report_cell, and they read nothing but their own variables: their
# arguments, and built-in functions, types and tuples bound as default values when this module was loaded in the
# zygote, before any cell. CPython (<= 3.12, the package's range) gives no code a way to rebind a running
# function's variables from outside it, or to swap a function's code or defaults, except through a tracer, ctypes,
# crafted code objects or setting __code__/__defaults__, all refused in sessions by _session_audit_hook. Before the
# cell, the interpreter's implicit entry points (signal handlers, timers, the signal mask, exception hooks, gc
# callbacks, the builtins, the standard streams) are put back as they were in the zygote, and what earlier cells
# left to collect is frozen (gc.freeze) so that no finalizer of theirs runs during the cell. A cell that fails is
# reported before anything model-touched runs again (_after_cell), so nothing can turn its error into "ok".

_TAMPERED_EXIT = 121  # a session's process whose file descriptors were swapped between cells: it runs nothing
_MISSING = object()
_STD_NAMES = (("stdin", "__stdin__"), ("stdout", "__stdout__"), ("stderr", "__stderr__"))
_SIGNAL_HANDLERS = tuple((sig, _signal.getsignal(sig)) for sig in signal.valid_signals()
                         if sig not in (signal.SIGKILL, signal.SIGSTOP) and _signal.getsignal(sig) is not None)
_SIGNAL_MASK = tuple(_signal.pthread_sigmask(_signal.SIG_BLOCK, ()))  # the zygote's, as a cell had it before
_SYS_HOOKS = (("excepthook", sys.__excepthook__), ("unraisablehook", sys.__unraisablehook__),
              ("displayhook", sys.__displayhook__), ("breakpointhook", sys.__breakpointhook__))


def _encode_private(obj):
    """The zygote's messages to the processes it made (template, cells, holders): 4-byte length, then marshal,
    which a holder decodes with built-ins alone (_holder_receive)."""
    data = marshal.dumps(obj)
    return len(data).to_bytes(_HEADER.size, "big") + data


def _holder_receive(sock, _recvmsg=_socket.socket.recvmsg, _setblocking=_socket.socket.setblocking,
                    _space=socket.CMSG_SPACE(8 * 4), _rights=(socket.SOL_SOCKET, socket.SCM_RIGHTS),
                    _size=_HEADER.size, _from_bytes=int.from_bytes, _order=sys.byteorder, _loads=marshal.loads,
                    _len=len, _range=range, _type=type, _dict=dict, _BaseException=BaseException):
    """Block until the zygote's next message (_encode_private) on `sock`. Returns (message, the file descriptors
    sent with it); (None, fds) at end of input or for anything but a dict."""
    fds = []
    try:
        _setblocking(sock, True)
        header, ancillary, _flags, _addr = _recvmsg(sock, _size, _space)
        for level, kind, data in ancillary:
            if (level, kind) == _rights:
                for i in _range(0, _len(data) - _len(data) % 4, 4):
                    fds.append(_from_bytes(data[i:i + 4], _order))
        while header and _len(header) < _size:
            more = _recvmsg(sock, _size - _len(header))[0]
            if not more:
                return None, fds
            header += more
        if not header:
            return None, fds
        size = _from_bytes(header, "big")
        body = b""
        while _len(body) < size:
            more = _recvmsg(sock, size - _len(body))[0]
            if not more:
                return None, fds
            body += more
        msg = _loads(body)
    except _BaseException:  # noqa: BLE001 - a broken channel: the caller ends
        return None, fds
    return (msg if _type(msg) is _dict else None), fds


def _report_cell(fd, status, error_type, holder, _join=str.join, _str=str, _encode=str.encode, _len=len,
                 _write=os.write):
    """The cell's one report to the zygote: JSON made of checked strings (no model object's method is called).
    `holder`: the pid of the successor keeping a session's state after an "ok"."""
    body = _encode(_join("", ('{"status": "', status, '", "error_type": ',
                              "null" if error_type is None else _join("", ('"', error_type, '"')),
                              "" if holder is None else _join("", (', "holder": ', _str(holder))), "}")), "utf-8")
    _write(fd, _len(body).to_bytes(4, "big") + body)


def _judged_cell(namespace, code, filename, fds, inodes, cell_pid, graveyard,
                 _report=_report_cell, _fstat=os.fstat, _exit=os._exit, _tampered=_TAMPERED_EXIT, _setpgid=os.setpgid, _getpid=os.getpid,
                 _open_fd=os.open, _dup2=os.dup2, _close=os.close, _devnull=(os.devnull, os.O_RDWR), _open=_io.open,
                 _sigmask=_signal.pthread_sigmask, _setmask=_signal.SIG_SETMASK, _mask=_SIGNAL_MASK,
                 _setitimer=_signal.setitimer,
                 _timers=(_signal.ITIMER_REAL, _signal.ITIMER_VIRTUAL, _signal.ITIMER_PROF),
                 _getsignal=_signal.getsignal, _signal_fn=_signal.signal, _handlers=_SIGNAL_HANDLERS,
                 _sys_dict=sys.__dict__, _hooks=_SYS_HOOKS, _std_names=_STD_NAMES, _modules=sys.modules,
                 _builtins=builtins, _builtins_dict=builtins.__dict__, _builtins_items=tuple(builtins.__dict__.items()),
                 _gc_callbacks=gc.callbacks, _gc_freeze=gc.freeze, _missing=_MISSING,
                 _compile=compile, _exec=exec, _zip=zip, _dict=dict, _type=type, _isinstance=isinstance,
                 _issubclass=issubclass, _int=int, _int_eq=int.__eq__, _exit_code=SystemExit.__dict__["code"].__get__,
                 _mro=type.__dict__["__mro__"].__get__, _name=type.__dict__["__name__"].__get__,
                 _isidentifier=str.isidentifier, _str_len=str.__len__, _max_name=_MAX_ERROR_TYPE_CHARS,
                 _BaseException=BaseException, _SystemExit=SystemExit, _MemoryError=MemoryError):
    """Run `code` in `namespace` as this process's cell: fds are its stdout, stderr and result pipes (and, for a
    session, its successor's socket), each checked against the inode the zygote sent. Reports a failure at once;
    returns (status, error_type, the exception caught or None): "ok" is reported by the caller, after the cell's
    threads and (for a session) its successor."""
    try:
        for fd, inode in _zip(fds, inodes):
            if _fstat(fd).st_ino != inode:
                _exit(_tampered)
    except _BaseException:  # noqa: BLE001 - a descriptor closed by an earlier cell's code
        _exit(_tampered)
    out_fd, err_fd, result_fd = fds[0], fds[1], fds[2]
    _setpgid(0, 0)
    # The interpreter as the zygote left it, where code runs without the cell calling it.
    _sigmask(_setmask, _mask)
    for which in _timers:
        _setitimer(which, 0)
    for sig, handler in _handlers:
        if _getsignal(sig) is not handler:
            graveyard.append(_signal_fn(sig, handler))
    for name, hook in _hooks:
        graveyard.append(_sys_dict.get(name))
        _sys_dict[name] = hook
    graveyard.append(_dict(_builtins_dict))
    _builtins_dict.clear()
    _builtins_dict.update(_builtins_items)
    graveyard.append(namespace.get("__builtins__"))
    namespace["__builtins__"] = _builtins
    graveyard.append(_gc_callbacks[:])
    _gc_callbacks.clear()
    _gc_freeze()  # garbage earlier cells left is never collected during this one: none of its finalizers runs
    # fds 0-2 and the std streams: new objects on the call's pipes (line-buffered, so output written before a kill
    # is not lost in a buffer; unencodable characters escaped, as CPython does for stderr).
    devnull = _open_fd(*_devnull)
    _dup2(devnull, 0)
    _dup2(out_fd, 1)
    _dup2(err_fd, 2)
    for fd in (devnull, out_fd, err_fd):
        if fd > 2:
            _close(fd)
    streams = (_open(0, "r", closefd=False),
               _open(1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False),
               _open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False))
    for (name, dunder), stream in _zip(_std_names, streams):
        graveyard.append(_sys_dict.get(name))
        _sys_dict[name] = _sys_dict[dunder] = stream
    # Compiled with the warnings module out of sight, so that a SyntaxWarning is shown by the interpreter's own C
    # code and not through Python code an earlier cell could have changed.
    caught = None
    warnings_module = _modules.get("warnings", _missing)
    _modules["warnings"] = None
    try:
        compiled = _compile(code, filename, "exec", dont_inherit=True)
    except _BaseException as exc:  # noqa: BLE001 - a SyntaxError, or a RecursionError/MemoryError on huge code
        compiled, caught = None, exc
    if warnings_module is _missing:
        _modules.pop("warnings", None)
    else:
        _modules["warnings"] = warnings_module
    if compiled is not None:
        try:
            _exec(compiled, namespace)
        except _BaseException as exc:  # noqa: BLE001 - whatever the model raised is its result
            caught = exc
    if _getpid() != cell_pid:  # a process the model forked ran off the end of the cell: end it quietly
        _exit(0)
    if caught is None:
        return "ok", None, None
    if _isinstance(caught, _SystemExit):
        exit_code = _exit_code(caught)
        if exit_code is None or (_issubclass(_type(exit_code), _int) and _int_eq(exit_code, 0)):
            return "ok", None, None  # as CPython at the end of a script: SystemExit(None) or an int equal to 0
        status, error_type = "error", "SystemExit"
    elif _isinstance(caught, _MemoryError):
        status, error_type = "memory_limit", None
    else:  # the exception's class name, or that of its nearest ancestor whose name is a short identifier
        status, error_type = "error", "BaseException"
        for cls in _mro(_type(caught)):
            name = _name(cls)
            if _isidentifier(name) and _str_len(name) <= _max_name:
                error_type = name
                break
    _report(result_fd, status, error_type, None)
    return status, error_type, caught


def _holder_loop(sock, namespace, _receive=_holder_receive, _judge=_judged_cell, _report=_report_cell,
                 _fork=os.fork, _getpid=os.getpid, _exit=os._exit, _OSError=OSError):
    """A holder's life: wait for requests (frozen meanwhile); answer a fork; for a run, fork the backup, wait for
    the go, then become the cell (run the code; on success fork the successor, which goes on with this loop as the
    session's new holder). Until the go this is a process whose memory model code has touched, so it may
    misbehave: the zygote checks all it says, gives it deadlines, resets the session if it fails, and sends the
    go only to a holder that waits for it alone (one thread, blocked on its socket). From the go to the report,
    only this function's own variables are used (see above)."""
    graveyard = []  # what the last cell's set-up took out of use: freed here, before the next one
    while True:
        graveyard.clear()
        msg, fds = _receive(sock)
        op = None if msg is None else msg.get("op")
        if op == "fork":  # a copy for a new session, the zygote's child (it must see the copy's cells end)
            (copy_sock,) = fds
            copy = _fork_through_middle()
            if copy == 0:  # the copy: it serves its own session from here
                sock.close()
                sock = socket.socket(fileno=copy_sock)
                continue
            os.close(copy_sock)
            sock.sendall(_encode({"pid": copy}))
            continue
        if op != "run":
            _exit(0)
        code, filename, inodes = msg["code"], msg["filename"], msg["inodes"]
        out_fd, err_fd, result_fd, successor_sock, backup_sock = fds
        _use_scratch(msg["scratch"])
        pid = _fork()
        if pid == 0:  # the backup: the state before this cell, kept in case the cell fails
            sock.close()
            for fd in (out_fd, err_fd, result_fd, successor_sock):
                os.close(fd)
            sock = socket.socket(fileno=backup_sock)
            continue
        os.setpgid(pid, pid)  # its own group (set here, by the parent, before the zygote hears of it)
        os.close(backup_sock)
        sock.sendall(_encode({"pid": pid}))
        go, _fds = _receive(sock)
        if go is None or go.get("op") != "go":
            _exit(0)
        # This process is the cell now, and a child of the zygote (as its holder was).
        cell_pid = _getpid()
        status, _error_type, caught = _judge(namespace, code, filename,
                                             (out_fd, err_fd, result_fd, successor_sock), inodes, cell_pid, graveyard)
        _after_cell(caught, code, filename)
        if status != "ok" or _getpid() != cell_pid:
            _exit(0)
        # Success: a fork of this process, in its process group, is the session's new state.
        try:
            successor = _fork()
        except _OSError:  # the zygote then keeps the state from before this cell
            successor = None
        if successor == 0:
            os.close(result_fd)
            _detach_std_streams()
            sock = socket.socket(fileno=successor_sock)
            continue
        _report(result_fd, "ok", None, successor)
        _exit(0)


def _session_audit_hook(event, args, _own_globals=globals(), _function=types.FunctionType, _type=type,
                        _str=str, _bytes=bytes, _int=int, _fspath=os.fspath, _startswith=str.startswith,
                        _split=str.split, _split_bytes=bytes.split, _join=str.join, _error=PermissionError,
                        _refused=frozenset({"sys.addaudithook", "sys.settrace", "sys.setprofile", "code.__new__",
                                            "sys.monitoring.register_callback"})):
    """Installed in every session's process before its first cell, and so in all of them (Python has no way to
    remove an audit hook). Refuses, with PermissionError, what would let a cell reach the code that runs and judges
    its session's later cells: another audit hook, a tracer or profiler (which can rebind a running function's
    variables), sys.monitoring callbacks, ctypes, building code objects, setting __code__ or __defaults__ of this
    module's functions, and opening (or linking to) a path through a file named `mem` (/proc/self/mem: its own
    memory)."""
    if event in _refused or _startswith(event, "ctypes."):
        raise _error(_join("", ("refused in a sandbox session: ", event)))
    if event == "object.__setattr__":
        if _type(args[0]) is _function and args[0].__globals__ is _own_globals:
            raise _error("refused in a sandbox session: changing the sandbox's own functions")
    elif event == "open" or event == "os.symlink":
        path = args[0]
        if _type(path) is _int:
            return
        if _type(path) is not _str and _type(path) is not _bytes:
            path = _fspath(path)
        parts = _split_bytes(path, b"/") if _type(path) is _bytes else _split(path, "/")
        if "mem" in parts or b"mem" in parts:
            raise _error("refused in a sandbox session: a path through a file named 'mem'")


# ---------------------------------------------------------------------------------------------------------------
# The template: what every one-off cell and every session's first state is a fork of. The zygote forks it before
# its first request, so it has never held a request's code or a reply's output: freed memory is not erased, and a
# cell forked from the zygote itself could read earlier calls' code and output from what it inherits.


_CLONE_PARENT = 0x00008000
_PYTHON_C_API = ctypes.pythonapi  # its calls keep the GIL, as Python's own fork steps require


def _fork_sibling():
    """fork(), except that the child's parent is this process's parent (clone with CLONE_PARENT): what the template
    forks is the zygote's child, as the zygote needs (it must see its cells end, wait4), without a middle process
    that forks again and exits, which cost as much as the rest of a trivial call. Python's own steps around a fork
    run as os.fork runs them (PyOS_BeforeFork, PyOS_AfterFork_Child/_Parent: the C API's way to fork outside
    os.fork; they reseed `random` and run os.register_at_fork hooks). The C library's own fork steps do not run:
    safe here, in a single-threaded process that holds none of its locks. Returns 0 in the child, its pid in the
    parent. Where the clone call's number is not known (other architectures): a fork through a middle process."""
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        return _fork_through_middle()
    _PYTHON_C_API.PyOS_BeforeFork()
    pid = _PYTHON_LIBC.syscall(_CLONE[_AUDIT_ARCH[machine][0]], _CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        _PYTHON_C_API.PyOS_AfterFork_Child()
        return 0
    _PYTHON_C_API.PyOS_AfterFork_Parent()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def _fork_through_middle():
    """_fork_sibling where clone cannot be called directly (another architecture, or a session's process, where
    ctypes is refused): a middle process forks the child and exits, and the child, an orphan, comes to the zygote
    (a subreaper)."""
    zygote = os.getppid()
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        child = os.fork()
        if child == 0:
            os.close(pid_r)
            os.close(pid_w)
            deadline = time.monotonic() + _GRACE_S
            while os.getppid() != zygote:  # the middle is exiting: its death signal would be ours (PDEATHSIG)
                if time.monotonic() > deadline:  # the zygote is gone
                    os._exit(1)
                time.sleep(0.00005)
            return 0
        os.write(pid_w, str(child).encode())
        os._exit(0)
    os.close(pid_w)
    pid = os.read(pid_r, 32)
    os.close(pid_r)
    os.waitpid(middle, 0)
    return int(pid or 0)


def _template_loop(cfg, sock):
    """The template's life: for each request of the zygote, fork the process asked for (a child of the zygote:
    _fork_sibling) and answer its pid. It reads only these requests (a kind, a uid, a path, numbers) and the file
    descriptors sent with them."""
    while True:
        msg, fds = _holder_receive(sock)
        if msg is None:
            os._exit(0)
        pid = _fork_sibling()
        if pid == 0:
            sock.close()
            _become(cfg, msg, fds)
        for fd in fds:
            os.close(fd)
        sock.sendall(_encode({"pid": pid}))


def _become(cfg, msg, fds):
    """In a fresh fork of the template: become a one-off cell (fds: stdout, stderr and result pipes, and the socket
    its code comes through) or a session's first holder (fds: its socket). Never returns."""
    try:
        _enter_cell_process(cfg, msg["uid"], msg["scratch"], set(fds), msg["nproc"], msg["cgroup_procs"])
        if msg["kind"] == "holder":
            _detach_std_streams()
            sys.addaudithook(_session_audit_hook)
            _holder_loop(socket.socket(fileno=fds[0]), _fresh_main_module())
        out_w, err_w, res_w, code_fd = fds
        with socket.socket(fileno=code_fd) as code_sock:
            request, _fds = _holder_receive(code_sock)
        if request is not None:
            code, filename = request["code"], request["filename"]
            status, _error_type, caught = _judged_cell(_fresh_main_module(), code, filename, (out_w, err_w, res_w),
                                                       request["inodes"], os.getpid(), [])
            _after_cell(caught, code, filename)
            if status == "ok":
                _report_cell(res_w, "ok", None, None)
    finally:
        os._exit(0)


class _Template:
    """The zygote's handle on the template process."""

    def __init__(self, cfg, proto_in, proto_out):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.sock.close()
                os.close(proto_in)
                os.close(proto_out)
                _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                _template_loop(cfg, theirs)
            finally:
                os._exit(0)
        theirs.close()

    def spawn(self, kind, uid, scratch, nproc, cgroup_procs, fds):
        """The pid of a new process of `kind` ("cell" or "holder"), a child of this process. The template never
        runs model code, so it is trusted; if it is gone (killed by a cell of the rlimit backend, which shares
        its uid), the worker ends and the pool starts a new one."""
        msg = {"kind": kind, "uid": uid, "scratch": scratch, "nproc": nproc, "cgroup_procs": cgroup_procs}
        answer = None
        if _send(self.sock, _encode_private(msg), fds, time.monotonic() + _GRACE_S):
            answer = _recv(self.sock, time.monotonic() + _GRACE_S)
        if answer is None or type(answer.get("pid")) is not int or answer["pid"] <= 1:
            os.write(2, b"cleaner.sandbox: the template process is gone; the worker ends\n")
            os._exit(1)
        return answer["pid"]


# ---------------------------------------------------------------------------------------------------------------
# Memory and pids per call through cgroup v2, where the trainer could delegate one to the worker.


class _Cgroups:
    """Per-call cgroups under the worker's cgroup `root` (the trainer put this zygote in root/supervisor): each call
    runs in a fresh root/call-N with memory.max (and pids.max where the pids controller is delegated); frozen
    holders wait in root/holders. A fresh cgroup per call, because the pages a call leaves to its session's new
    holder stay charged to the cgroup they were allocated in (and move to root when it is removed)."""

    def __init__(self, root, memory_bytes, max_pids):
        self.root = root
        with open(os.path.join(root, "cgroup.controllers")) as f:
            controllers = f.read().split()
        self.pids = "pids" in controllers
        self.settings = {"memory.max": memory_bytes, "memory.swap.max": 0, "memory.oom.group": 1,
                         **({"pids.max": max_pids} if self.pids else {})}
        self.counter = 0
        self.holders = os.path.join(root, "holders")

    def new_call(self):
        self.counter += 1
        path = os.path.join(self.root, f"call-{self.counter}")
        os.mkdir(path)
        for name, value in self.settings.items():
            if os.path.exists(os.path.join(path, name)):
                with open(os.path.join(path, name), "w") as f:
                    f.write(str(value))
        return path

    @staticmethod
    def move(path, pid):
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except ProcessLookupError:  # it has just died
            pass

    @staticmethod
    def current(path):
        with open(os.path.join(path, "memory.current")) as f:
            return int(f.read())

    @staticmethod
    def oom_killed(path):
        with open(os.path.join(path, "memory.events")) as f:
            return any(line.split()[0] == "oom_kill" and int(line.split()[1]) > 0 for line in f)

    @staticmethod
    def remove(path):
        for _ in range(100):  # its last processes may still be exiting
            try:
                os.rmdir(path)
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.001)


# ---------------------------------------------------------------------------------------------------------------
# The zygote proper.


class _Holder:
    """A session's frozen state process, known by a pidfd (so a reused pid is never mistaken for it)."""

    def __init__(self, pid, sock, inode, uid, scratch, pidfd=None, scratch_bytes=0):
        self.pid, self.sock, self.uid, self.scratch = pid, sock, uid, scratch
        self.inode = inode  # of its end of `sock`: the socket it waits on (_waiting_for_zygote)
        self.pidfd = os.pidfd_open(pid) if pidfd is None else pidfd
        self.scratch_bytes = scratch_bytes  # what its scratch directory holds (bytes + _INODE_BYTES per file)
        self.signal(signal.SIGSTOP)  # frozen from the start: it runs only while the zygote talks to it

    def signal(self, sig):
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
            return True
        except ProcessLookupError:
            return False

    def alive(self):
        return not _wait_fd(self.pidfd, select.POLLIN, 0)  # a pidfd is readable once its process has exited

    def intact(self, deadline):
        """Alive and not being killed. `alive()` alone is not enough right after a cell sent SIGKILL: the process
        exits only once it is scheduled. A SIGKILL wakes a sleeping process at once, for good, so a holder that
        sleeps (stopped, or on its socket) with no SIGKILL pending and not exiting was not killed; one still on its
        way to the stop it was sent is given until `deadline`."""
        while self.alive():
            if _frozen(self.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)
        return False

    def drop(self):
        """Kill it and release what the zygote holds of it (it is reaped by the next _reap)."""
        self.signal(signal.SIGKILL)
        self.sock.close()
        os.close(self.pidfd)


def _checked_child(pid, parents, pgrp, uid):
    """A pidfd for `pid` if it is a live process whose parent is in `parents`, in process group `pgrp` (None: any)
    and of `uid` (None: any), else None. The pidfd is opened first, so the checks are about that process."""
    if type(pid) is not int or pid <= 1:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    fields = _stat(pid)
    owner = _real_uid(pid)
    if (fields is None or fields[0] in (b"Z", b"X") or int(fields[1]) not in parents
            or (pgrp is not None and int(fields[2]) != pgrp) or (uid is not None and owner != uid)):
        os.close(pidfd)
        return None
    return pidfd


def _waiting_for_zygote(pid, sock_inode, deadline, uid):
    """Whether `pid`, a would-be holder, does what a holder does until `deadline`: one thread, blocked receiving on
    the socket whose inode is `sock_inode` (the one the zygote gave it), and, under a cell uid of its own (`uid`
    not None), not dumpable. A process that runs code of its own (a loop, a thread) is refused rather than kept as
    a session's state, and so is one a later cell of the same uid could write into through /proc/<pid>/mem (an
    earlier cell can set PR_SET_DUMPABLE; the files under /proc/<pid> of a non-dumpable process are root's). Where
    the receive call's number is not known (other architectures), only the thread count is checked."""
    while True:
        if _single_threaded_receiving(pid, sock_inode):
            try:
                return uid is None or os.stat(f"/proc/{pid}/mem").st_uid == 0
            except OSError:
                return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


def _single_threaded_receiving(pid, sock_inode):
    try:
        if len(os.listdir(f"/proc/{pid}/task")) != 1:
            return False
        if _RECVMSG is None:
            return True
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
        if len(fields) < 2 or fields[0] != str(_RECVMSG):
            return False
        return os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}") == f"socket:[{sock_inode}]"
    except (OSError, ValueError):
        return False


def _own_group(pid):
    """Move a child of ours into a process group of its own; False if it cannot be (it ran execve, or left our
    session)."""
    try:
        os.setpgid(pid, pid)
        return True
    except OSError:
        return False


class Zygote:
    def __init__(self, cfg, proto_in, proto_out, cgroup_root, template):
        self.cfg = cfg
        self.template = template
        self.proto_in, self.proto_out = proto_in, proto_out
        self.me = os.getpid()
        self.holders = {}
        self.uids_in_use = set()
        self.uid_range = _usable_uid_range() if cfg["drop_uid"] else None
        if cfg["drop_uid"] and self.uid_range is None:
            raise OSError("cells must run under an unprivileged uid here, but this process cannot switch to one")
        self.one_off_uid = self._draw_uid()
        self.scratch_root = cfg["scratch_root"]
        if cfg["scratch_bytes"] is None:  # rlimit: a directory of this worker's own in the pool's host directory
            self.scratch_root = os.path.join(self.scratch_root, f"worker-{os.getpid()}")
            os.mkdir(self.scratch_root)
        os.chmod(self.scratch_root, 0o711 if self.uid_range else 0o700)
        self.scratch_quota = cfg["scratch_bytes"]  # None: not measured (the rlimit backend's shared /tmp)
        self.cgroups = _Cgroups(cgroup_root, cfg["memory_bytes"], cfg["max_processes"] + 2) if cgroup_root else None
        # Without a uid per session the kernel counts every process and thread of the user (in its user
        # namespace) against RLIMIT_NPROC: allow max_processes beyond what the user ran when we started, plus
        # the holders. (Root is exempt from RLIMIT_NPROC: there the limit does nothing.)
        shared_uid = self.uid_range is None and os.getuid() != 0
        self.tasks_before = _tasks_of_uid(os.getuid()) if shared_uid else 0
        self.counter = 0
        self.after_reply = None
        self.helper = {name: next(p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.path.exists(p))
                       for name in ("rm", "cp")}
        # Scratch directories of ended calls and sessions: renamed at once into this directory, which only the
        # zygote can enter, and removed by a background `rm` that runs only between calls (_remove_scratch).
        self.trash = os.path.join(self.scratch_root, ".trash")
        os.mkdir(self.trash, 0o700)
        self.trash_count = 0
        self.trash_pending = []  # names in the trash that no remover has been started for yet
        self.remover = None  # the running `rm`: (pid, pidfd, the names it removes)

    # -- helpers ------------------------------------------------------------------------------------------------

    def _draw_uid(self):
        if self.uid_range is None:
            return None
        low, high = self.uid_range
        while True:
            uid = random.randrange(low, high)
            if uid not in self.uids_in_use:
                self.uids_in_use.add(uid)
                return uid

    def _make_scratch(self, uid):
        self.counter += 1
        path = os.path.join(self.scratch_root, f"cell-{self.counter}")
        os.mkdir(path, 0o700)
        if uid is not None:
            os.chown(path, uid, uid)
        return path

    def _run_helper(self, argv):
        """Run a coreutils helper (rm, cp) as this process, with a deadline; whether it succeeded. These handle
        any tree a cell can build (depth, special files, permissions) where Python's shutil would not."""
        pid = os.posix_spawn(argv[0], argv, {"PATH": self.cfg["path"], "LANG": "C.UTF-8"})
        pidfd = os.pidfd_open(pid)
        done = _wait_fd(pidfd, select.POLLIN, time.monotonic() + self.cfg["timeout_s"] + _GRACE_S)
        if not done:
            _kill(pidfd)
        os.close(pidfd)
        _pid, status = os.waitpid(pid, 0)
        return done and status == 0

    def _remove_scratch(self, path):
        """Take a scratch directory out of every cell's reach at once, and have it removed later: a rename into
        the trash (a directory only the zygote can enter), so that no later call can read what it held, and no
        request waits for the removal of a large tree (see _tend_remover)."""
        try:
            os.rmdir(path)  # the common case: the cell wrote nothing
            return
        except OSError:
            pass
        self.trash_count += 1
        name = str(self.trash_count)
        os.rename(path, os.path.join(self.trash, name))
        self.trash_pending.append(name)

    def _tend_remover(self):
        """Between calls: reap a finished remover (its names go back to the queue if it was killed), start one
        for what waits in the trash, and let it run (nice 19). It is frozen while a call runs (_pause_remover),
        so a call's scratch quota and memory see only the call's own files, and it takes no CPU from the cell."""
        self._forget_finished_remover()
        if self.remover is None and self.trash_pending:
            names, self.trash_pending = self.trash_pending, []
            argv = [self.helper["rm"], "-rf", "--one-file-system", "--", *(f"{self.trash}/{n}" for n in names)]
            pid = os.posix_spawn(argv[0], argv, {"PATH": self.cfg["path"], "LANG": "C.UTF-8"})
            os.setpriority(os.PRIO_PROCESS, pid, 19)
            self.remover = (pid, os.pidfd_open(pid), names)
        elif self.remover is not None:
            signal.pidfd_send_signal(self.remover[1], signal.SIGCONT)

    def _forget_finished_remover(self):
        """Reap the remover if it has ended (before its pid could be reused), and queue its names again if it was
        killed."""
        if self.remover is None or not _wait_fd(self.remover[1], select.POLLIN, 0):
            return
        _pid, pidfd, names = self.remover
        try:
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            if info is not None and info.si_code != os.CLD_EXITED:
                self.trash_pending = names + self.trash_pending
        except ChildProcessError:  # reaped by _reap already
            pass
        os.close(pidfd)
        self.remover = None

    def _pause_remover(self):
        """Freeze the remover before a call and wait until it is stopped (an unlink in progress completes first),
        so that the call's baselines are not moved by it."""
        self._forget_finished_remover()
        if self.remover is None:
            return
        pid, pidfd, _names = self.remover
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _GRACE_S
        while time.monotonic() < deadline:
            fields = _stat(pid)
            if fields is None or fields[0] in (b"T", b"Z", b"X") or _wait_fd(pidfd, select.POLLIN, 0):
                return
            time.sleep(0.0002)

    def _scratch_used(self):
        if self.scratch_quota is None:
            return 0
        st = os.statvfs(self.scratch_root)
        return (st.f_blocks - st.f_bfree) * st.f_frsize + (st.f_files - st.f_ffree) * _INODE_BYTES

    def _nproc_limit(self, session):
        """RLIMIT_NPROC: the cell's max_processes, plus for a session its backup and its successor."""
        extra = self.tasks_before + 3 * len(self.holders) + 1 if self.tasks_before else 0
        return self.cfg["max_processes"] + (2 if session else 0) + extra

    def _spared(self):
        """Pids of the template, the live holders of all sessions and the remover (a dead one's pid may be reused:
        it is not spared)."""
        remover = {self.template.pid}
        if self.remover is not None and not _wait_fd(self.remover[1], select.POLLIN, 0):
            remover.add(self.remover[0])
        if not self.holders:
            return remover
        poller = select.poll()
        for holder in self.holders.values():
            poller.register(holder.pidfd, select.POLLIN)
        dead = {fd for fd, _event in poller.poll(0)}
        return {h.pid for h in self.holders.values() if h.pidfd not in dead} | remover

    def _sweep(self, family_uid=None):
        """Kill every descendant except the holders, until none is left. Orphans come back to us (we are a
        subreaper), so a process that detached with setsid or a double fork is still found here. Holders of
        `family_uid` (the call's session and those forked from it, which its cells could have thawed) are frozen
        again and their subtrees searched too."""
        family = {h.pid for h in self.holders.values() if h.uid == family_uid and h.signal(signal.SIGSTOP)}
        for _ in range(_SWEEP_ROUNDS):
            victims = [p for p in _processes(self.me, self._spared(), family) if not _is_zombie(p)]
            if not victims:
                break
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _reap()
            time.sleep(0.001)
        _reap()

    # -- supervision of one running cell --------------------------------------------------------------------------

    def _supervise(self, pid, pidfd, out_r, err_r, res_r, started, call):
        """Collect a running cell's output until it exits, runs out of time, writes too much or uses too much
        memory or scratch space. Returns the observations; the cell is dead or killed when this returns."""
        cap = self.cfg["max_output_bytes"]
        deadline = started + self.cfg["timeout_s"]
        stdout, stderr, result = bytearray(), bytearray(), bytearray()
        total = 0
        reason = None
        poller = select.poll()
        for fd in (out_r, err_r, res_r, pidfd):
            os.set_blocking(fd, False) if fd != pidfd else None
            poller.register(fd, select.POLLIN)
        open_fds = {out_r, err_r, res_r}

        def drain(fd):
            """Read what is buffered; False at end of file."""
            nonlocal total, reason
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return True
                if not data:
                    return False
                if fd == res_r:
                    result.extend(data[: _MAX_REPORT_BYTES + _HEADER.size + 1 - len(result)])
                    continue
                total += len(data)
                if fd == out_r:
                    stdout.extend(data[: max(0, cap - len(stdout))])
                else:
                    stderr.extend(data)
                    del stderr[: max(0, len(stderr) - cap)]
                if total > cap:
                    reason = "output_limit"
                    return True

        exited = False
        next_tick = started + _TICK_S
        while reason is None and not exited:
            now = time.monotonic()
            if now >= deadline:
                reason = "timeout"
                break
            if now >= next_tick:
                reason = self._over_limits(call)
                next_tick = now + _TICK_S
                continue
            for fd, _event in poller.poll((min(deadline, next_tick) - now) * 1000):
                if fd == pidfd:
                    exited = True
                elif fd in open_fds and not drain(fd):
                    poller.unregister(fd)
                    open_fds.discard(fd)
        if reason is None:  # the last measurement, at its exit (the memory of the exited cell is moot: what it
            reason = self._over_limits(call, processes=False)  # left behind is swept)
        if exited or reason is not None:
            _kill(pidfd)
        _pid, exit_status, usage = os.wait4(pid, 0)
        # Everything it wrote before it ended is in the pipes already: take it (not what its children write later).
        for fd in (out_r, err_r, res_r):
            if fd in open_fds and (reason is None or fd == res_r):
                drain(fd)
        for fd in (out_r, err_r, res_r, pidfd):
            os.close(fd)
        return {
            "reason": reason,
            "exit_status": exit_status,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "report": _valid_report(_one_frame(result)),
            "reported": bool(result),
            "stdout": bytes(stdout),
            "stderr": bytes(stderr),
            "duration_s": time.monotonic() - started,
        }

    def _over_limits(self, call, processes=True):
        """What limit the running call is over, measured now: "memory_limit", "scratch_limit" or None.
        `processes`: measure the memory of its processes too (the watchdog)."""
        growth = self._scratch_used() - call["scratch_before"]
        if self.scratch_quota is not None and call["scratch_prior"] + growth > self.scratch_quota:
            return "scratch_limit"
        limit = self.cfg["memory_bytes"] - max(0, growth)  # files written to scratch are memory too (tmpfs)
        if call["cgroup"] is not None:  # the backup lives outside the call's cgroup: its share is added here
            if _Cgroups.oom_killed(call["cgroup"]):
                return "memory_limit"
            if processes and call["counted"] and (
                    _Cgroups.current(call["cgroup"]) + _pss_bytes(call["counted"]) > self.cfg["memory_bytes"]):
                return "memory_limit"
            return None
        if not processes:
            return "memory_limit" if limit < 0 else None
        # The call's processes, and the backup of its session's state (a process the call made: the state before
        # the cell, whose pages the cell's writes unshare)
        pids = _processes(self.me, self._spared(), call["descend"]) + list(call["counted"])
        if _rss_bytes(pids) > limit and _pss_bytes(pids) > limit:
            return "memory_limit"
        return None

    def _classify(self, sup):
        """The verdict from what was observed (module docstring): (status, error_type, note)."""
        cfg, reason, exit_status, report = self.cfg, sup["reason"], sup["exit_status"], sup["report"]
        if reason == "output_limit":
            return "output_limit", None, (f"OutputLimitError: the cell wrote more than {cfg['max_output_bytes']} "
                                          "bytes of output and was stopped")
        if reason == "memory_limit":
            return "memory_limit", None, (f"MemoryError: the cell's processes used more than "
                                          f"{cfg['memory_bytes'] >> 20} MiB together and were stopped")
        if reason == "scratch_limit":
            return "memory_limit", None, (f"ScratchLimitError: the files in the cell's scratch directory exceeded "
                                          f"{self.scratch_quota >> 20} MiB; the cell was stopped and its scratch "
                                          "directory emptied")
        if reason == "timeout":
            return "timeout", None, (f"TimeoutError: the cell did not finish within {cfg['timeout_s']:g} s and "
                                     "was stopped")
        if os.WIFSIGNALED(exit_status):
            sig = os.WTERMSIG(exit_status)
            cpu_limit = int(cfg["cpu_time_s"] + 0.999)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and sup["cpu_s"] >= cpu_limit):
                return "timeout", None, f"TimeoutError: the cell used more than {cpu_limit} s of CPU time and was stopped"
            name = _signal_name(sig)
            return "error", name, f"{name}: the cell's process was killed by signal {name}"
        code = os.WEXITSTATUS(exit_status)
        if code == _TAMPERED_EXIT and report is None and not sup["reported"]:
            return "error", "SessionTampered", (
                "SessionTampered: the cell did not run: the file descriptors the sandbox gave the session's process "
                "were replaced before the cell could start (by code an earlier cell left running); the session "
                "keeps its state from before this cell")
        if code != 0:
            return "error", "SystemExit", f"SystemExit: the process exited with status {code} before the cell finished"
        if report is None and not sup["reported"]:
            return "error", "SystemExit", "SystemExit: the process exited (os._exit) before the cell finished"
        if report is None:
            return "error", "SandboxProtocolError", ("SandboxProtocolError: the cell wrote to the sandbox's result "
                                                      "channel; its result is void")
        return report["status"], report["error_type"], ""

    def _reply(self, sup, status, error_type, note):
        stderr = sup["stderr"].decode("utf-8", "replace")
        if note:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + note + "\n"
        return {"status": status, "error_type": error_type, "stdout": sup["stdout"].decode("utf-8", "replace"),
                "stderr": stderr, "duration_s": sup["duration_s"]}

    def _start_call(self, scratch_prior, descend):
        """Per-call bookkeeping shared by one-off and session calls: the call's cgroup and the baselines."""
        self._pause_remover()
        return {"cgroup": self.cgroups.new_call() if self.cgroups else None, "scratch_before": self._scratch_used(),
                "scratch_prior": scratch_prior, "descend": descend, "counted": set()}

    def _end_call(self, call):
        if call["cgroup"] is not None:
            _Cgroups.remove(call["cgroup"])

    # -- operations ----------------------------------------------------------------------------------------------

    def run_one_off(self, code, filename):
        uid = self.one_off_uid
        scratch = self._make_scratch(uid)
        call = self._start_call(0, set())
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        started = time.monotonic()
        procs = None if call["cgroup"] is None else os.path.join(call["cgroup"], "cgroup.procs")
        code_ours, code_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        inodes = [os.fstat(fd).st_ino for fd in (out_w, err_w, res_w)]
        pid = self.template.spawn("cell", uid, scratch, self._nproc_limit(False), procs,
                                  [out_w, err_w, res_w, code_theirs.fileno()])
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        code_theirs.close()
        pidfd = os.pidfd_open(pid)
        # The code goes to the cell itself, never through the template. A cell that died before reading it
        # (a setup failure) is seen by the supervision below.
        _send(code_ours, _encode_private({"code": code, "filename": filename, "inodes": inodes}), [],
              started + self.cfg["timeout_s"])
        code_ours.close()
        sup = self._supervise(pid, pidfd, out_r, err_r, res_r, started, call)
        _kill_group(pid)
        reply = self._reply(sup, *self._classify(sup))

        def clean_up():
            self._sweep()
            self._end_call(call)
            self._remove_scratch(scratch)

        self.after_reply = clean_up
        return reply

    def open_session(self, session_id):
        uid = self._draw_uid()
        self.holders[session_id] = self._spawn_holder(uid, self._make_scratch(uid))
        return {"ok": True}

    def _spawn_holder(self, uid, scratch):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        inode = os.fstat(theirs.fileno()).st_ino
        pid = self.template.spawn("holder", uid, scratch, self._nproc_limit(True), None, [theirs.fileno()])
        theirs.close()
        if self.cgroups is not None:  # by the zygote: the holder is frozen at once, maybe before its own setup
            _Cgroups.move(self.cgroups.holders, pid)
        return _Holder(pid, ours, inode, uid, scratch)

    def _reset_session(self, session_id, holder):
        """Give the session a fresh, empty state (its files stay), after its holder died or misbehaved."""
        holder.drop()
        replacement = self._spawn_holder(holder.uid, holder.scratch)
        replacement.scratch_bytes = holder.scratch_bytes
        self.holders[session_id] = replacement

    def run_in_session(self, session_id, code, filename):
        """Module docstring, "A session's call". Every step with the holder has a deadline; whatever goes wrong
        on its side is the session's (its call is an error) and never another session's."""
        holder = self.holders[session_id]
        if not holder.alive():
            self._reset_session(session_id, holder)
            self.after_reply = lambda: self._sweep(holder.uid)
            return self._lost("was killed before this cell (by a cell of a session forked from the same state)")
        call = self._start_call(holder.scratch_bytes, set())
        if call["cgroup"] is not None:
            _Cgroups.move(call["cgroup"], holder.pid)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        successor_ours, successor_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        backup_ours, backup_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        successor_inode, backup_inode = (os.fstat(s.fileno()).st_ino for s in (successor_theirs, backup_theirs))
        # The call's clock starts when its holder is thawed: the holder's memory is the model's (a signal handler
        # of an earlier cell runs now), so every step from here counts against timeout_s.
        started = time.monotonic()
        call_deadline = started + self.cfg["timeout_s"]
        holder.signal(signal.SIGCONT)
        control_deadline = min(started + _GRACE_S, call_deadline)
        inodes = [os.fstat(fd).st_ino for fd in (out_w, err_w, res_w)] + [successor_inode]
        sent = _send(holder.sock, _encode_private({"op": "run", "code": code, "filename": filename,
                                                   "scratch": holder.scratch, "inodes": inodes}),
                     [out_w, err_w, res_w, successor_theirs.fileno(), backup_theirs.fileno()], control_deadline)
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        successor_theirs.close()
        backup_theirs.close()
        answer = _recv(holder.sock, control_deadline) if sent else None
        backup_pid = answer.get("pid") if answer else None
        backup_pidfd = _checked_child(backup_pid, {holder.pid}, backup_pid, holder.uid)
        if backup_pidfd is not None and not _waiting_for_zygote(backup_pid, backup_inode, control_deadline,
                                                                holder.uid):
            os.close(backup_pidfd)  # it runs code of its own instead of waiting for the zygote
            backup_pidfd = None
        if backup_pidfd is not None:
            backup = _Holder(backup_pid, backup_ours, backup_inode, holder.uid, holder.scratch, backup_pidfd,
                             holder.scratch_bytes)
            call["descend"] = {backup.pid}  # its children, if any, are the call's
            call["counted"] = {backup.pid}  # and its memory too: the call made it
            if call["cgroup"] is not None:  # out of the call's cgroup, which an OOM kills as a whole
                _Cgroups.move(self.cgroups.holders, backup.pid)
        # The go goes only to a holder that waits for it alone: no thread or timer-driven code of an earlier
        # cell's may run beside the cell (see _judged_cell).
        if backup_pidfd is None or not _waiting_for_zygote(holder.pid, holder.inode, control_deadline, holder.uid) \
                or not _send(holder.sock, _encode_private({"op": "go"}), [], control_deadline):
            for fd in (out_r, err_r, res_r):
                os.close(fd)
            successor_ours.close()
            backup_ours.close()
            if backup_pidfd is not None:
                backup.drop()
            self._reset_session(session_id, holder)
            self._end_call_later(call, holder.uid)
            if time.monotonic() >= call_deadline:  # the model's state took the whole call: its time-out
                return {"status": "timeout", "error_type": None, "stdout": "",
                        "duration_s": time.monotonic() - started,
                        "stderr": f"TimeoutError: the cell did not finish within {self.cfg['timeout_s']:g} s: the "
                                  "session's interpreter process did not even start it in that time, and was "
                                  "stopped; the session continues from an empty state\n"}
            return self._lost("did not start the cell (it stopped answering, or answered wrongly)")
        # The holder is the cell now; from here on, the session's state is the backup until the cell succeeds.
        self.holders[session_id] = backup
        cell_pid, cell_pidfd = holder.pid, holder.pidfd
        holder.sock.close()
        sup = self._supervise(cell_pid, cell_pidfd, out_r, err_r, res_r, started, call)
        status, error_type, note = self._classify(sup)
        successor_pidfd = None
        if status == "ok":  # the cell's successor must be its own child (now ours: it has exited) in its group
            successor_pid = sup["report"].get("holder")
            successor_pidfd = _checked_child(successor_pid, {self.me}, cell_pid, holder.uid)
            if successor_pidfd is not None and not (
                    _own_group(successor_pid) and _waiting_for_zygote(
                        successor_pid, successor_inode, max(call_deadline, time.monotonic() + _SETTLE_S),
                        holder.uid)):
                os.close(successor_pidfd)
                successor_pidfd = None
            if successor_pidfd is None:
                status, error_type, note = "error", "SessionLost", (
                    "SessionLost: the cell finished, but the process that was to keep its state is missing, not "
                    "the cell's own, or not waiting for the sandbox (the cell changed its process group, killed "
                    "or replaced it, or it runs code of its own); the session keeps its state from before this "
                    "cell")
        _kill_group(cell_pid)
        if successor_pidfd is not None:
            self.holders[session_id] = _Holder(successor_pid, successor_ours, successor_inode, holder.uid,
                                               holder.scratch, successor_pidfd, holder.scratch_bytes)
            backup.drop()
        else:
            successor_ours.close()
            if not backup.intact(time.monotonic() + _SETTLE_S):  # the cell killed it: the state from before the cell is gone too
                self._reset_session(session_id, backup)
                note += ("\n" if note else "") + ("SessionLost: the cell killed the copy of its session's state; "
                                                  "the next cell starts from an empty state")
        # The scratch quota is checked once the call's processes are gone, so that none adds files afterwards.
        self._sweep(holder.uid)
        kept = self.holders[session_id]
        kept.scratch_bytes = call["scratch_prior"] + self._scratch_used() - call["scratch_before"]
        over_quota = self.scratch_quota is not None and kept.scratch_bytes > self.scratch_quota
        if over_quota and sup["reason"] is None:
            status, error_type, note = self._classify({**sup, "reason": "scratch_limit"})
        if over_quota or sup["reason"] == "scratch_limit":
            self._empty_scratch(kept)
        if call["cgroup"] is not None:
            _Cgroups.move(self.cgroups.holders, kept.pid)
        self.after_reply = lambda: self._end_call(call)
        return self._reply(sup, status, error_type, note)

    def _empty_scratch(self, holder):
        self._remove_scratch(holder.scratch)
        os.mkdir(holder.scratch, 0o700)
        if holder.uid is not None:
            os.chown(holder.scratch, holder.uid, holder.uid)
        holder.scratch_bytes = 0

    def _end_call_later(self, call, uid):
        def clean_up():
            self._sweep(uid)
            self._end_call(call)

        self.after_reply = clean_up

    @staticmethod
    def _lost(why):
        return {"status": "error", "error_type": "SessionLost", "stdout": "", "duration_s": 0.0,
                "stderr": f"SessionLost: the session's interpreter process {why}; this cell did not run, and the "
                          "session continues from an empty state\n"}

    def fork_session(self, session_id, new_id):
        holder = self.holders[session_id]
        scratch = self._make_scratch(holder.uid)
        if not self._run_helper([self.helper["cp"], "-a", "--one-file-system", "--", holder.scratch + "/.",
                                 scratch]):
            self._remove_scratch(scratch)
            return {"ok": False, "error": "the session's scratch files could not be copied"}
        copy_ours, copy_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        copy_inode = os.fstat(copy_theirs.fileno()).st_ino
        holder.signal(signal.SIGCONT)
        deadline = time.monotonic() + _GRACE_S
        sent = _send(holder.sock, _encode_private({"op": "fork"}), [copy_theirs.fileno()], deadline)
        copy_theirs.close()
        answer = _recv(holder.sock, deadline) if sent else None
        copy_pid = answer.get("pid") if answer else None
        pidfd = _checked_child(copy_pid, {self.me}, None, holder.uid)
        holder.signal(signal.SIGSTOP)
        if pidfd is not None and not (_own_group(copy_pid)
                                      and _waiting_for_zygote(copy_pid, copy_inode, deadline, holder.uid)):
            os.close(pidfd)
            pidfd = None
        if pidfd is None:
            copy_ours.close()
            self._remove_scratch(scratch)
            self.after_reply = lambda: self._sweep(holder.uid)
            return {"ok": False, "error": "the session's interpreter process did not answer"}
        copy = _Holder(copy_pid, copy_ours, copy_inode, holder.uid, scratch, pidfd, holder.scratch_bytes)
        if self.cgroups is not None:
            _Cgroups.move(self.cgroups.holders, copy.pid)
        self.holders[new_id] = copy
        return {"ok": True}

    def close_session(self, session_id):
        holder = self.holders.pop(session_id, None)
        if holder is None:
            return {"ok": True}
        holder.drop()

        def clean_up():
            self._sweep(holder.uid)
            self._remove_scratch(holder.scratch)
            if holder.uid is not None and not any(h.uid == holder.uid for h in self.holders.values()):
                self.uids_in_use.discard(holder.uid)

        self.after_reply = clean_up
        return {"ok": True}

    def shutdown(self):
        if self.remover is not None:
            _kill(self.remover[1])
            self.remover = None
        for holder in self.holders.values():
            holder.drop()
        self.holders.clear()
        self._sweep()

    def _fault(self, msg, exc):
        """A fault of the zygote's own while it served `msg`: logged, and charged to the call (or session) that
        was running, which is reset; other sessions keep their state."""
        traceback.print_exception(exc, file=sys.stderr)
        session_id = msg.get("session")
        if session_id in self.holders:
            self._reset_session(session_id, self.holders[session_id])
        self.after_reply = self._sweep
        if msg["op"] != "run":
            return {"ok": False, "error": f"the sandbox failed: {type(exc).__name__}"}
        return {"status": "error", "error_type": "SandboxFault", "stdout": "", "duration_s": 0.0,
                "stderr": f"SandboxFault: the sandbox failed while running this cell ({type(exc).__name__}); "
                          "its session, if any, continues from an empty state\n"}

    def serve(self, hello):
        _write_all(self.proto_out, _encode({**hello, "pid": os.getpid(),
                                            "cell_uid_isolation": self.uid_range is not None,
                                            "memory_limit": "cgroup" if self.cgroups else "watchdog",
                                            "pids_limit": "cgroup" if self.cgroups and self.cgroups.pids else "rlimit",
                                            "scratch_quota": self.scratch_quota is not None,
                                            "scratch_root": self.scratch_root}))
        while True:
            msg = _read_message(self.proto_in)
            if msg is None or msg["op"] == "exit":
                self.shutdown()
                return
            op = msg["op"]
            handlers = {"open": lambda: self.open_session(msg["session"]),
                        "fork": lambda: self.fork_session(msg["session"], msg["new"]),
                        "close": lambda: self.close_session(msg["session"]),
                        "run": lambda: (self.run_one_off(msg["code"], msg["filename"]) if msg["session"] is None
                                        else self.run_in_session(msg["session"], msg["code"], msg["filename"]))}
            try:
                reply = handlers[op]()
            except Exception as exc:  # noqa: BLE001 - see _fault: logged in full, never silent
                reply = self._fault(msg, exc)
            _write_all(self.proto_out, _encode(reply))
            # Clean-up that the reply does not depend on (the sweep, the scratch directory) runs now, while the
            # trainer reads the reply, and always before the next request.
            if self.after_reply is not None:
                after_reply, self.after_reply = self.after_reply, None
                after_reply()
            self._tend_remover()


def _largest_mapped_range(path):
    best = (0, 0)
    with open(path) as f:
        for line in f:
            inside, _outside, count = (int(x) for x in line.split())
            low, high = max(inside, 1), inside + count - 1  # never id 0; 2**32-1 is not a valid id
            if high - low > best[1] - best[0]:
                best = (low, high)
    return best


def _cell_uid_range():
    """Unprivileged ids this (root) process may switch cells to (as uid and gid): the upper half of the largest
    range the user namespace maps, so that cells do not share an id with real users."""
    (ulow, uhigh), (glow, ghigh) = _largest_mapped_range("/proc/self/uid_map"), _largest_mapped_range(
        "/proc/self/gid_map")
    low, high = max(ulow, glow), min(uhigh, ghigh)
    if high - low < 1024:
        raise OSError("the user namespace maps too few ids to give cells their own")
    return (low + high) // 2, high


def _usable_uid_range():
    """_cell_uid_range(), or None when this process cannot switch a child to such an id."""
    try:
        low, high = _cell_uid_range()
    except OSError:
        return None
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(high - 1)
            os.setuid(high - 1)
        finally:
            os._exit(0 if os.getuid() == high - 1 else 1)
    _pid, status = os.waitpid(pid, 0)
    return (low, high) if status == 0 else None


def _preload(modules):
    """Import `modules` once, here, so that cells find them imported. BLAS and OpenMP pools are kept to one
    thread: a fork copies only the forking thread, and a pool whose threads vanished deadlocks its next call."""
    if not modules:
        return
    os.environ.update({name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")})
    for name in modules:
        __import__(name)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise RuntimeError(f"preloading {', '.join(modules)} started {threads - 1} thread(s); cells are forks of "
                           "this process and must not inherit a half-copied thread pool")


def main():
    cfg = json.loads(sys.argv[1])
    cgroup_root = sys.argv[2] if len(sys.argv) > 2 else None
    # Keep the protocol off fds 0/1 so that nothing a cell inherits can write to it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)  # fd 2 stays: the zygote's own errors reach the trainer's log
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # inherited by every cell: no privilege gain through set-uid programs
    _prctl(_PR_SET_DUMPABLE, 0)  # where cells share its uid, they cannot read or trace its memory
    if cfg["die_with_parent"]:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.environ.clear()
    os.environ.update({"PATH": cfg["path"], "LANG": "C.UTF-8"})
    sys.path[:] = [p for p in sys.path if p] + list(cfg["python_paths"])
    _BASE_PATH[:] = sys.path
    try:
        # Small modules model code often uses, imported once so that cells share them copy-on-write for free.
        for name in ("math", "re", "itertools", "functools", "collections", "fractions", "decimal", "statistics"):
            __import__(name)
        _preload(cfg["preload_modules"])
        seccomp = _install_seccomp()
        # The first compile() in a process builds the interpreter's AST types (about 1 ms and 140 page faults):
        # done once here, every cell would otherwise pay it.
        compile("pass", "<warm-up>", "exec", dont_inherit=True)
        gc.freeze()  # a cell's garbage collections skip what it inherited, so they do not copy those pages
        zygote = Zygote(cfg, proto_in, proto_out, cgroup_root, _Template(cfg, proto_in, proto_out))
    except Exception as exc:  # noqa: BLE001 - the trainer is told why, then the sandbox ends
        _write_all(proto_out, _encode({"hello": False, "error": f"{type(exc).__name__}: {exc}"}))
        raise
    zygote.serve({"hello": True, "seccomp": seccomp, "preloaded": list(cfg["preload_modules"])})


if __name__ == "__main__":
    main()
