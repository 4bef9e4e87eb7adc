"""Server processes of our own (redis-server, a Tango database, device servers): started,
watched until they say they are ready, and stopped.

.. important::
   These functions may be called from any thread. A child's output is drained by a daemon
   thread of its own, so that a chatty server never blocks on a full pipe. A child started
   from the main thread ends with this process, even one killed with SIGKILL (Linux);
   one started from another thread may outlive it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from sync_primitives import Event

_log = logging.getLogger(__name__)

#: Lines of a child's output kept (its first lines, and every ready line).
KEPT_LINES = 200


S = TypeVar("S", bound="ChildServer")


class ChildStartError(RuntimeError):
    """A child process did not start; the message holds its last output."""


def start_child(
    args: Sequence[str],
    *,
    name: str,
    is_ready: Callable[[str], bool],
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start ``args`` and wait until a line of its output satisfies ``is_ready``; the
    process and its output so far (kept growing by the drain thread).

    Raises:
        ChildStartError: it exited, or said nothing ready within ``timeout`` seconds (it
            is then stopped); the message names it and holds its last lines.

    Whatever interrupts the wait (``KeyboardInterrupt``, say) stops the child too. Started
    from the main thread on Linux, the child gets SIGTERM when this process ends, however
    it ends (``kill -9`` too): see :func:`_dying_with_this_process`.
    """
    process = subprocess.Popen(
        _dying_with_this_process(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # A Python child (PyTango's database server) would keep its ready line in its
        # buffer while its output is a pipe: unbuffered, the line comes when printed.
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    ready = Event()
    output: list[str] = []
    threading.Thread(
        target=_drain,
        args=(process, ready, output, is_ready, name),
        name=f"{name}-output",
        daemon=True,
    ).start()
    # The event is also set when the output ends; only a ready line says it started.
    try:
        started = ready.wait(timeout) and any(map(is_ready, output))
    except BaseException:  # Ctrl-C, or SIGTERM made KeyboardInterrupt: no orphan left
        terminate(process)
        raise
    if not started:
        status = process.poll()
        terminate(process)
        tail = "".join(output[-10:]).strip() or "no output"
        if status is None:
            raise ChildStartError(f"{name} did not start within {timeout} s: {tail}")
        raise ChildStartError(f"{name} exited with status {status} before it was ready: {tail}")
    return process, output


#: Run in the child before its program: asks Linux for SIGTERM when the thread that
#: started it ends (``prctl(PR_SET_PDEATHSIG)``), then becomes the program (same pid). A
#: parent that died before the request was made is no longer the child's parent: the
#: child then ends at once instead of running on as an orphan.
_DIE_WITH_PARENT = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:  # no ctypes or no prctl: the child runs, as it did without
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(f"{sys.argv[2]}: not started, the process that started it has ended")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _dying_with_this_process(args: Sequence[str]) -> list[str]:
    """``args``, run so that the child ends with this process when the caller is the main
    thread on Linux; as they are otherwise.

    Linux sends the signal when the *thread* that forked the child ends, not the process:
    a server started from a worker thread would be stopped when that thread ends, long
    before the process does. The main thread ends with the process, so only its children
    get it (the testing kit's fixtures, the demo and the CLI start theirs there).
    ``kill -9`` of a pytest run then leaves no server behind.

    Raises:
        FileNotFoundError: no program ``args[0]`` (as ``Popen`` raises it).
    """
    command = list(args)
    if (
        sys.platform != "linux"
        or not sys.executable
        or threading.current_thread() is not threading.main_thread()
    ):
        return command
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0])
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it has exited."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _drain(
    process: subprocess.Popen[bytes],
    ready: Event,
    output: list[str],
    is_ready: Callable[[str], bool],
    name: str,
) -> None:
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.decode(errors="replace")
        if len(output) < KEPT_LINES or is_ready(line):
            output.append(line)
        if is_ready(line):
            ready.set()
        _log.debug("%s: %s", name, line.rstrip())
    process.wait()  # its output ended: it is exiting; reaped, its status tells why
    ready.set()  # the starter sees no ready line, and the exit status


def process_state(pid: int) -> str | None:
    """The state Linux gives process ``pid`` (``R``, ``S``, ``T`` stopped, ``Z`` exited
    and not reaped yet...), or None if there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]  # after the (name)
    except (OSError, IndexError):
        return None


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP, a debugger)."""
    return process_state(pid) in ("T", "t")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is used)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ChildServer:
    """What our embedded servers share: one child process and perhaps a directory of its
    own, stopped by :meth:`stop`, by the ``with`` block, when the object is
    garbage-collected, or at interpreter exit, whichever comes first."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: str | None = None
        self._finalizer: weakref.finalize[..., ChildServer] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        """Whether the process runs (started, and not exited)."""
        return self._process is not None and self._process.poll() is None

    def start(self: S) -> S:
        raise NotImplementedError

    def _adopt(self, process: subprocess.Popen[bytes]) -> None:
        """``process`` is now this server's, to be stopped whatever happens."""
        self._process = process
        self._finalizer = weakref.finalize(self, _cleanup, process, self._directory)

    def halt(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout`` seconds), keeping the
        directory; nothing if it is not running."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._process is not None:
            terminate(self._process, timeout)
            self._process = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process and remove the directory; nothing if it is not running."""
        self.halt(timeout)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self: S) -> S:
        return self if self._process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cleanup(process: subprocess.Popen[bytes], directory: str | None) -> None:
    terminate(process)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
