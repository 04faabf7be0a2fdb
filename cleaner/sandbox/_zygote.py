"""The supervisor that runs inside one sandbox: it forks a process per cell and enforces the limits from outside it.

This file is not imported by the trainer. Its source is passed to a fresh interpreter started as
`python -I -S -c <source> <config json>` (inside bubblewrap, or bare for the rlimit backend), so it uses the
standard library only and imports nothing heavy: every cell is a fork of this small process.

Process tree of one worker::

    zygote (this file; PR_SET_CHILD_SUBREAPER, so orphans come back to it)
    |-- cell            one-off call: forked by the zygote, supervised by it, discarded afterwards
    |-- holder          one per session: a process whose memory is the session's interpreter state
    |   `-- cell        forked by the holder; on success a fork of it (a fresh process with the new state)
    |                   replaces the holder, on failure it is discarded
    `-- ...             nothing else survives a call: the sweep kills every other descendant

The zygote never runs model code. A cell, and a holder (a former cell), are untrusted: their memory may have been
changed by model code, so the zygote takes nothing from them on trust beyond their own session's result, and it
enforces wall-clock time, output size and clean-up itself. Per-process limits (memory, CPU time, file size,
processes, open files) are rlimits set in the cell before model code runs, which the cell cannot raise.

Protocol with the trainer: length-prefixed JSON messages on the zygote's stdin/stdout (moved to private file
descriptors at start). Requests: {"op": "run", "code", "filename", "session"}, {"op": "open"|"close", "session"},
{"op": "fork", "session", "new"}; every request gets exactly one reply.
"""

import builtins
import ctypes
import json
import linecache
import os
import random
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import types

# Small modules model code often uses, imported once here so that cells share them (copy-on-write) for free.
for _name in ("math", "re", "itertools", "functools", "collections", "fractions", "decimal", "statistics"):
    __import__(_name)

_HEADER = struct.Struct(">I")
_MAX_CONTROL_MESSAGE_BYTES = 1 << 16  # holder -> zygote messages are tiny; anything larger is a broken holder
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_LIBC = ctypes.CDLL(None, use_errno=True)
_SWEEP_ROUNDS = 1000
_MAX_FD = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # no fd of ours can be above it
if _MAX_FD == resource.RLIM_INFINITY:
    _MAX_FD = 1 << 20
_GRACE_S = 5.0  # how long a holder may take to answer the zygote beyond the cell's time limit (fork, load)


def _prctl(option, value):
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# ---------------------------------------------------------------------------------------------------------------
# Framing: a 4-byte big-endian length, then UTF-8 JSON.


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


def _send_with_fds(sock, obj, fds):
    data = _encode(obj)
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):  # (an empty sendall would fail if the peer has already acted and died)
        sock.sendall(data[sent:])


def _recv_blocking(sock):
    """Holder side: the next message from the zygote and the file descriptors sent with it; (None, []) on EOF."""
    header, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, 8)
    if len(header) < _HEADER.size:
        header += _recv_exact_sock(sock, _HEADER.size - len(header))
    body = _recv_exact_sock(sock, _HEADER.unpack(header)[0]) if header else b""
    if not header or body is None:
        return None, fds
    return json.loads(body), fds


def _recv_exact_sock(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _readable(sock, timeout_s):
    """Whether `sock` has data within `timeout_s`. poll, not select: a zygote with many sessions holds sockets
    whose numbers exceed select's limit of 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def _recv_with_deadline(sock, deadline):
    """Zygote side: one message from an untrusted holder, or None if it closed, stalled past `deadline` or sent
    something malformed."""
    buf = b""
    want = _HEADER.size
    have_header = False
    while True:
        while len(buf) < want:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _readable(sock, remaining):
                return None
            try:
                chunk = sock.recv(want - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        if have_header:
            try:
                msg = json.loads(buf)
            except ValueError:
                return None
            return msg if isinstance(msg, dict) else None
        want = _HEADER.unpack(buf)[0]
        if want > _MAX_CONTROL_MESSAGE_BYTES:
            return None
        buf, have_header = b"", True


# ---------------------------------------------------------------------------------------------------------------
# Process bookkeeping: descendants through /proc, the sweep that kills everything that must not survive a call.


def _children(pid):
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


def _descendants(root):
    out, stack = [], [root]
    while stack:
        for child in _children(stack.pop()):
            out.append(child)
            stack.append(child)
    return out


def _reap():
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reap_one(pid):
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _sweep(keep):
    """Kill every descendant of this process except the pids in `keep` (session holders), until none is left.
    Orphans come back to us (we are a subreaper), so a process that detached with setsid or a double fork is
    still found here. Killed processes cannot fork, so each round shrinks what is left."""
    me = os.getpid()
    for _ in range(_SWEEP_ROUNDS):
        victims = [p for p in _descendants(me) if p not in keep and not _is_zombie(p)]
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


def _kill_group(pid):
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------------------------------------------------------
# The cell: what a freshly forked process does before, during and after running model code.


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


def _enter_cell_process(cfg, uid, scratch, keep_fds, nproc_limit):
    """Turn a freshly forked process into a confined one: own process group, limits, unprivileged uid, scratch
    directory as cwd and HOME, minimal environment, no other file descriptors. Runs for holders and one-off
    cells; a session's cells inherit all of it from their holder."""
    os.setpgid(0, 0)
    _close_fds_except(keep_fds)
    os.chdir(scratch)
    os.environ.update({"HOME": scratch, "TMPDIR": scratch})  # the rest is the zygote's minimal environment
    tempfile.tempdir = None
    cpu_soft = int(cfg["cpu_time_s"] + 0.999)
    limits = [
        (resource.RLIMIT_AS, cfg["memory_bytes"]),
        (resource.RLIMIT_FSIZE, cfg["max_file_bytes"]),
        (resource.RLIMIT_NOFILE, cfg["max_open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]
    for which, value in limits:
        resource.setrlimit(which, (value, value))
    # Soft limit sends SIGXCPU (reported as a time-out); the hard limit one second later is a SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_soft + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc_limit, nproc_limit))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # As for `python script.py`: files the cell writes to its directory can be imported; extra paths last.
    sys.argv = [""]
    sys.path[:] = [scratch] + [p for p in sys.path if p != scratch] + list(cfg["python_paths"])


def _redirect_std_streams(out_fd, err_fd):
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for fd in {devnull, out_fd, err_fd} - {0, 1, 2}:
        os.close(fd)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = _std_streams()


_STD_STREAMS = []


def _std_streams():
    """sys.stdin/stdout/stderr for cells, on fds 0-2, built once in the zygote and rebuilt if a cell closed them.
    Line-buffered writers: output written before a kill is not lost in a buffer. Unencodable characters are
    escaped (as CPython does for stderr) instead of raising inside the model's print."""
    if not _STD_STREAMS or any(stream.closed for stream in _STD_STREAMS):
        _STD_STREAMS[:] = [
            open(0, "r", closefd=False),
            open(1, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False),
            open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False),
        ]
    return _STD_STREAMS


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


def _run_cell_code(code, filename, namespace):
    """Execute model code in `namespace`. Returns (status, error_type). The traceback goes to stderr, like an
    uncaught exception in a script, without this function's frame."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        exec(compile(code, filename, "exec", dont_inherit=True), namespace)
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return "ok", None
        print(f"SystemExit: {exc.code}", file=sys.stderr)
        return "error", "SystemExit"
    except MemoryError as exc:
        _print_exception(exc, 1)
        return "memory_limit", None
    except BaseException as exc:  # noqa: BLE001 - whatever the model raised is its result
        _print_exception(exc, 1)
        return "error", type(exc).__name__
    return "ok", None


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


def _cell(code, filename, namespace, out_fd, err_fd):
    """Body of a cell process: run the code with fds 1 and 2 on the given pipes. Returns (status, error_type);
    the caller reports it and decides what the process does next."""
    cell_pid = os.getpid()
    _redirect_std_streams(out_fd, err_fd)
    status, error_type = _run_cell_code(code, filename, namespace)
    _join_threads()
    _finish_streams()
    if os.getpid() != cell_pid:  # a process the model forked ran off the end of the cell: end it quietly
        os._exit(0)
    return status, error_type


def _report(result_fd, message):
    try:
        _write_all(result_fd, _encode(message))
        os.close(result_fd)
    except OSError:  # the model closed or broke the channel; the zygote sees no result
        os._exit(0)


# ---------------------------------------------------------------------------------------------------------------
# Holders: a session's state lives in the memory of one process, which forks a cell per call.


def _holder_loop(sock, namespace):
    """Serve one session until retired. This runs in a process whose memory model code has touched: a cell
    can break its own session (say, by rebinding os.fork), never the zygote or another session."""
    while True:
        _reap()
        msg, fds = _recv_blocking(sock)
        if msg is None or msg["op"] == "retire":
            os._exit(0)
        if msg["op"] == "fork":
            (new_sock_fd,) = fds
            pid = os.fork()
            if pid == 0:
                os.setpgid(0, 0)
                sock.close()
                os.chdir(msg["scratch"])
                os.environ.update({"HOME": msg["scratch"], "TMPDIR": msg["scratch"]})
                sock = socket.socket(fileno=new_sock_fd)
                continue
            os.close(new_sock_fd)
            sock.sendall(_encode({"pid": pid}))
            continue
        out_fd, err_fd, result_fd, new_sock_fd = fds
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # No parent-death signal: the cell outlives a holder it kills (the zygote, its subreaper, still
            # supervises it). It starts once the holder has told the zygote its pid, so that a cell killing its
            # holder at once cannot make that report go missing.
            os.setpgid(0, 0)
            sock.close()
            os.close(go_w)
            os.read(go_r, 1)
            os.close(go_r)
            status, error_type = _cell(msg["code"], msg["filename"], namespace, out_fd, err_fd)
            if status != "ok":
                _report(result_fd, {"status": status, "error_type": error_type})
                os._exit(0)
            # Success: a fork of this process is the session's new state, a fresh process (no CPU time used,
            # no threads) that serves in place of the old holder. The cell itself ends.
            holder = os.fork()
            if holder == 0:
                os.setpgid(0, 0)
                os.close(result_fd)
                _detach_std_streams()
                sock = socket.socket(fileno=new_sock_fd)
                continue
            _report(result_fd, {"status": "ok", "error_type": None, "holder": holder})
            os._exit(0)
        os.close(go_r)
        for fd in fds:
            os.close(fd)
        sock.sendall(_encode({"pid": pid}))
        os.write(go_w, b"x")
        os.close(go_w)
        # Wait for the cell to end (report its exit status) or for the zygote's next word (retire on success).
        pidfd = os.pidfd_open(pid)
        ready = select.select([sock, pidfd], [], [])[0]
        if pidfd in ready and sock not in ready:
            _pid, status, usage = os.wait4(pid, 0)
            sock.sendall(_encode({"exit": status, "cpu_s": usage.ru_utime + usage.ru_stime}))
        os.close(pidfd)


# ---------------------------------------------------------------------------------------------------------------
# The zygote proper.


class _Holder:
    def __init__(self, pid, sock, uid, scratch):
        self.pid, self.sock, self.uid, self.scratch = pid, sock, uid, scratch


class Zygote:
    def __init__(self, cfg, proto_in, proto_out):
        self.cfg = cfg
        self.proto_in, self.proto_out = proto_in, proto_out
        self.holders = {}
        self.uids_in_use = set()
        self.uid_range = _usable_uid_range() if cfg["drop_uid"] else None
        self.one_off_uid = self._draw_uid()
        if cfg["scratch_root"]:
            self.scratch_root = cfg["scratch_root"]
            self.own_scratch_root = False
        else:
            self.scratch_root = tempfile.mkdtemp(prefix="cleaner-sandbox-")
            self.own_scratch_root = True
        os.chmod(self.scratch_root, 0o711 if self.uid_range else 0o700)
        # Without a uid per session the kernel counts every process and thread of the user (in its user
        # namespace) against RLIMIT_NPROC: allow max_processes beyond what the user ran when we started, plus
        # the holders. (Root is exempt from RLIMIT_NPROC: there the limit does nothing.)
        shared_uid = self.uid_range is None and os.getuid() != 0
        self.tasks_before = _tasks_of_uid(os.getuid()) if shared_uid else 0
        self.counter = 0
        self.after_reply = None

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

    def _remove_scratch(self, path):
        try:
            os.rmdir(path)  # the common case: the cell wrote nothing
            return
        except OSError:
            pass

        def unlock(_func, failed, _exc):
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)

        shutil.rmtree(path, onerror=unlock)

    def _nproc_limit(self):
        if self.tasks_before == 0:
            return self.cfg["max_processes"]
        return self.cfg["max_processes"] + self.tasks_before + len(self.holders) + 1

    def _may_belong_to(self, pid, holder):
        """Whether a pid reported by `holder` (an untrusted process) may be acted on as one of its session's: a
        process of the session's uid, never the zygote or another session's holder. It may have exited."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
            return False
        if any(h.pid == pid for h in self.holders.values() if h is not holder):
            return False
        if holder.uid is None:
            return True
        try:
            return os.stat(f"/proc/{pid}").st_uid == holder.uid
        except FileNotFoundError:
            return True  # it has already ended

    def _sweep(self):
        _sweep({h.pid for h in self.holders.values()})

    # -- supervision of one running cell --------------------------------------------------------------------------

    def _supervise(self, pid, out_r, err_r, res_r, started):
        """Collect a running cell's output and result until it reports, dies, runs out of time or writes too
        much. Returns a dict; the cell may still be alive (it is killed by the caller unless it succeeded)."""
        cap = self.cfg["max_output_bytes"]
        deadline = started + self.cfg["timeout_s"]
        stdout, stderr = bytearray(), bytearray()
        total = 0
        result_buf = bytearray()
        result = None
        reason = None
        poller = select.poll()
        for fd in (out_r, err_r, res_r):
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        try:
            pidfd = os.pidfd_open(pid)  # readable once the cell has exited (Linux >= 5.3)
            poller.register(pidfd, select.POLLIN)
        except ProcessLookupError:  # a session cell that already ended (and was reaped by its holder)
            pidfd = None
        open_fds = {out_r, err_r, res_r}

        def take(fd, data):
            nonlocal total, reason
            total += len(data)
            if fd == out_r:
                stdout.extend(data[: max(0, cap - len(stdout))])
            else:
                stderr.extend(data)
                del stderr[: max(0, len(stderr) - cap)]
            if total > cap and reason is None:
                reason = "output_limit"

        def drain(fd):
            """Read what is buffered; False at end of file."""
            while reason is None:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return True
                if not data:
                    return False
                if fd != res_r:
                    take(fd, data)
                elif len(result_buf) < _MAX_CONTROL_MESSAGE_BYTES:
                    result_buf.extend(data)
            return True

        def parse_result():
            if len(result_buf) < _HEADER.size:
                return None
            size = _HEADER.unpack(result_buf[: _HEADER.size])[0]
            if len(result_buf) < _HEADER.size + size:
                return None
            try:
                msg = json.loads(bytes(result_buf[_HEADER.size:_HEADER.size + size]))
            except ValueError:
                msg = None
            return msg if isinstance(msg, dict) else {"status": "error", "error_type": "SandboxProtocolError"}

        exited = pidfd is None
        if exited:
            drain(res_r)
            result = parse_result()
        while result is None and reason is None and not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timeout"
                break
            for fd, _event in poller.poll(remaining * 1000):
                if fd == pidfd:
                    exited = True
                elif fd in open_fds and not drain(fd):
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if exited and res_r in open_fds:
                drain(res_r)
            result = parse_result()
        if reason is None:
            # Everything the cell wrote before reporting or dying is in the pipes already: take it.
            for fd in (out_r, err_r):
                if fd in open_fds and reason is None:
                    drain(fd)
        for fd in (out_r, err_r, res_r) if pidfd is None else (out_r, err_r, res_r, pidfd):
            os.close(fd)
        return {
            "result": result,
            "reason": reason,
            "stdout": bytes(stdout),
            "stderr": bytes(stderr),
            "duration_s": time.monotonic() - started,
        }

    def _classify(self, sup, exit_status, cpu_s):
        """The reply for the trainer from a supervision record and, for a cell that did not report, its exit."""
        limits = self.cfg
        result, reason = sup["result"], sup["reason"]
        note = ""
        if reason == "output_limit":
            status, error_type = "output_limit", None
            note = (f"OutputLimitError: the cell wrote more than {limits['max_output_bytes']} bytes of output "
                    "and was stopped")
        elif reason == "timeout":
            status, error_type = "timeout", None
            note = f"TimeoutError: the cell did not finish within {limits['timeout_s']:g} s and was stopped"
        elif result is not None:
            status, error_type = result.get("status"), result.get("error_type")
            if status not in ("ok", "error", "memory_limit"):
                status, error_type = "error", "SandboxProtocolError"
        elif exit_status is None:
            status, error_type = "error", "ProcessDied"
            note = "ProcessDied: the cell's process ended without reporting a result"
        elif os.WIFSIGNALED(exit_status):
            sig = os.WTERMSIG(exit_status)
            cpu_limit = int(limits["cpu_time_s"] + 0.999)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s is not None and cpu_s >= cpu_limit):
                status, error_type = "timeout", None
                note = f"TimeoutError: the cell used more than {cpu_limit} s of CPU time and was stopped"
            else:
                name = signal.Signals(sig).name
                status, error_type = "error", name
                note = f"{name}: the cell's process was killed by signal {name}"
        else:
            code = os.WEXITSTATUS(exit_status)
            status, error_type = "error", "SystemExit"
            note = f"SystemExit: the process exited with status {code} (os._exit) before the cell finished"
        stderr = sup["stderr"].decode("utf-8", "replace")
        if note:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + note + "\n"
        return {
            "status": status,
            "error_type": error_type,
            "stdout": sup["stdout"].decode("utf-8", "replace"),
            "stderr": stderr,
            "duration_s": sup["duration_s"],
        }

    # -- operations ----------------------------------------------------------------------------------------------

    def run_one_off(self, code, filename):
        uid = self.one_off_uid
        scratch = self._make_scratch(uid)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _enter_cell_process(self.cfg, uid, scratch, {out_w, err_w, res_w}, self._nproc_limit())
                _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
                status, error_type = _cell(code, filename, _fresh_main_module(), out_w, err_w)
                _report(res_w, {"status": status, "error_type": error_type})
            finally:
                os._exit(0)
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        sup = self._supervise(pid, out_r, err_r, res_r, started)
        _kill_group(pid)

        def clean_up():
            _reap_one(pid)
            self._sweep()
            self._remove_scratch(scratch)

        if sup["result"] is None and sup["reason"] is None:  # died without a word: its exit status says how
            _pid, exit_status, usage = os.wait4(pid, 0)
            reply = self._classify(sup, exit_status, usage.ru_utime + usage.ru_stime)
        else:
            reply = self._classify(sup, None, None)
        self.after_reply = clean_up
        return reply

    def open_session(self, session_id):
        uid = self._draw_uid()
        scratch = self._make_scratch(uid)
        self.holders[session_id] = self._spawn_holder(uid, scratch)
        return {"ok": True}

    def _spawn_holder(self, uid, scratch):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                _enter_cell_process(self.cfg, uid, scratch, {theirs.fileno()}, self._nproc_limit() + 1)
                _detach_std_streams()
                _holder_loop(theirs, _fresh_main_module())
            finally:
                os._exit(0)
        theirs.close()
        return _Holder(pid, ours, uid, scratch)

    def _session_lost(self, session_id, holder, why):
        """The holder died or misbehaved: kill what is left of it, give the session a fresh (empty) state."""
        _kill_group(holder.pid)
        holder.sock.close()
        self.holders.pop(session_id)
        self._sweep()
        self.holders[session_id] = self._spawn_holder(holder.uid, holder.scratch)
        return {
            "status": "error",
            "error_type": "SessionLost",
            "stdout": "",
            "stderr": f"SessionLost: the session's interpreter process {why} (for example killed by its own code); "
                      "this cell did not run, and the session continues from an empty state\n",
            "duration_s": 0.0,
        }

    def run_in_session(self, session_id, code, filename):
        holder = self.holders[session_id]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        new_ours, new_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started = time.monotonic()
        fds = [out_w, err_w, res_w, new_theirs.fileno()]
        try:
            _send_with_fds(holder.sock, {"op": "run", "code": code, "filename": filename}, fds)
            sent = True
        except OSError:
            sent = False
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        new_theirs.close()
        # No model code runs before the holder answers, but allow for a loaded machine.
        reply = _recv_with_deadline(holder.sock, started + self.cfg["timeout_s"] + _GRACE_S) if sent else None
        pid = reply.get("pid") if reply else None
        if not self._may_belong_to(pid, holder):
            for fd in (out_r, err_r, res_r):
                os.close(fd)
            new_ours.close()
            return self._session_lost(session_id, holder, "did not start the cell" if sent else "is gone")
        sup = self._supervise(pid, out_r, err_r, res_r, started)
        result = sup["result"] or {}
        new_holder = result.get("holder")
        succeeded = sup["reason"] is None and result.get("status") == "ok" and isinstance(new_holder, int)
        if succeeded and not self._may_belong_to(new_holder, holder):
            new_ours.close()
            return self._session_lost(session_id, holder, "reported an invalid successor")
        if succeeded:
            try:
                holder.sock.sendall(_encode({"op": "retire"}))
            except OSError:
                pass
            holder.sock.close()
            holder.pid, holder.sock = new_holder, new_ours
            self.after_reply = self._sweep
            return self._classify(sup, None, None)
        new_ours.close()
        _kill_group(pid)

        def take_exit_report():  # the holder reports how the cell ended; read it before the next request
            return _recv_with_deadline(holder.sock, time.monotonic() + _GRACE_S)

        if sup["result"] is None and sup["reason"] is None:  # died without a word: its exit status says how
            ended = take_exit_report()
            if ended is None or not isinstance(ended.get("exit"), int):
                reply = self._classify(sup, None, None)
            else:
                reply = self._classify(sup, ended["exit"], ended.get("cpu_s"))
            self.after_reply = self._sweep
            return reply

        def clean_up():
            take_exit_report()
            self._sweep()

        self.after_reply = clean_up
        return self._classify(sup, None, None)

    def fork_session(self, session_id, new_id):
        holder = self.holders[session_id]
        scratch = self._make_scratch(holder.uid)
        shutil.copytree(holder.scratch, scratch, symlinks=True, dirs_exist_ok=True)
        if holder.uid is not None:
            for root, dirs, files in os.walk(scratch):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), holder.uid, holder.uid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _send_with_fds(holder.sock, {"op": "fork", "scratch": scratch}, [theirs.fileno()])
        except OSError:
            pass
        theirs.close()
        reply = _recv_with_deadline(holder.sock, time.monotonic() + _GRACE_S)
        pid = reply.get("pid") if reply else None
        if not self._may_belong_to(pid, holder):
            ours.close()
            self._remove_scratch(scratch)
            return {"ok": False, "error": "the session's interpreter process did not answer"}
        self.holders[new_id] = _Holder(pid, ours, holder.uid, scratch)
        return {"ok": True}

    def close_session(self, session_id):
        holder = self.holders.pop(session_id, None)
        if holder is None:
            return {"ok": True}
        try:
            holder.sock.sendall(_encode({"op": "retire"}))
        except OSError:
            pass
        holder.sock.close()
        _kill_group(holder.pid)
        self._sweep()
        self._remove_scratch(holder.scratch)
        if holder.uid is not None and not any(h.uid == holder.uid for h in self.holders.values()):
            self.uids_in_use.discard(holder.uid)
        return {"ok": True}

    def shutdown(self):
        for holder in self.holders.values():
            _kill_group(holder.pid)
        self.holders.clear()
        _sweep(set())
        if self.own_scratch_root:
            self._remove_scratch(self.scratch_root)

    def serve(self):
        _write_all(self.proto_out, _encode({
            "hello": True,
            "pid": os.getpid(),
            "cell_uid_isolation": self.uid_range is not None,
        }))
        while True:
            msg = _read_message(self.proto_in)
            if msg is None or msg["op"] == "exit":
                self.shutdown()
                return
            op = msg["op"]
            if op == "run" and msg.get("session") is None:
                reply = self.run_one_off(msg["code"], msg["filename"])
            elif op == "run":
                reply = self.run_in_session(msg["session"], msg["code"], msg["filename"])
            elif op == "open":
                reply = self.open_session(msg["session"])
            elif op == "fork":
                reply = self.fork_session(msg["session"], msg["new"])
            elif op == "close":
                reply = self.close_session(msg["session"])
            else:
                raise ValueError(f"unknown op {op!r}")
            _write_all(self.proto_out, _encode(reply))
            # Clean-up that the reply does not depend on (reaping, the sweep, the scratch directory) runs now,
            # while the trainer reads the reply, and always before the next request.
            if self.after_reply is not None:
                after_reply, self.after_reply = self.after_reply, None
                after_reply()


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
    """_cell_uid_range(), or None when this process cannot switch a child to such an id (then cells share the
    zygote's uid, and the trainer is told so)."""
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


def main():
    cfg = json.loads(sys.argv[1])
    # Keep the protocol off fds 0/1 so that nothing a cell inherits can write to it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)  # fd 2 stays: the zygote's own errors reach the trainer's log
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # inherited by every cell: no privilege gain through set-uid programs
    os.environ.clear()
    os.environ.update({"PATH": cfg["path"], "LANG": "C.UTF-8"})
    if cfg["die_with_parent"]:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _std_streams()
    Zygote(cfg, proto_in, proto_out).serve()


if __name__ == "__main__":
    main()
