"""Nothing left behind: ZooKeeper processes die with the process that started them, temp dirs go on SIGTERM.

Rules of this module:

- On Linux every server is started with a parent-death signal (``PR_SET_PDEATHSIG``, SIGKILL, set by
  ``setpriv``), so the kernel kills it when its parent dies, however it dies (SIGKILL included). The
  kernel's "parent" is the *thread* that forked, so every server is forked from one launcher thread
  that lives as long as the process: a member started from a short-lived thread must not die with it.
- A SIGTERM, whose default action ends the process without running ``atexit`` or finalisers, would
  leave the data directories behind: while an ensemble is started, a SIGTERM handler releases every
  live ensemble (kills its servers, removes its directories) and then chains to the handler installed
  before it (by default: the process ends killed by SIGTERM, as without it). It is installed from the
  main thread only (Python's rule), once, and not where SIGTERM is ignored.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from types import FrameType
from typing import Any, Protocol

from zklb._signals import Handler, chain

__all__ = ["popen", "track", "untrack"]

_PR_SET_PDEATHSIG = 1


class _Releasable(Protocol):
    def release(self) -> None: ...


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: list[_Releasable] = []
        self.previous: Handler = signal.SIG_DFL
        self.installed = False


_state = _State()


def track(resources: _Releasable) -> None:
    """Release ``resources`` if the process gets SIGTERM (until `untrack`)."""
    with _state.lock:
        if resources not in _state.live:
            _state.live.append(resources)
    _install()


def untrack(resources: _Releasable) -> None:
    """``resources`` were released: nothing to do for them on SIGTERM."""
    with _state.lock:
        if resources in _state.live:
            _state.live.remove(resources)


def _install() -> None:
    if _state.installed or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    _state.installed = True
    if current == signal.SIG_IGN:
        return  # SIGTERM does not end this process: nothing to clean up before it does
    _state.previous = current
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # No lock: the main thread may hold it at this instant; the list is only copied here.
    for resources in list(_state.live):
        try:
            resources.release()
        except Exception:  # release the others, and let the signal do its job
            pass
    chain(_state.previous, signum, frame)


# -- launching servers -------------------------------------------------------------------------------


def popen(command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **kwargs)`` whose process the kernel kills when this process dies.

    util-linux's ``setpriv --pdeathsig`` sets the signal and then execs the command (the setting
    survives exec); it is part of every Linux base system. Elsewhere the command runs as it is.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return subprocess.Popen(command, **kwargs)
    wrapped = [setpriv, "--pdeathsig", "KILL", "--", *command]
    return _Launcher.get().run(lambda: subprocess.Popen(wrapped, **kwargs))


class _Launcher:
    """The one thread that forks the servers, alive as long as the process (see the rules above)."""

    _instance: _Launcher | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._tasks: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="zklb-testing-launcher", daemon=True).start()

    @classmethod
    def get(cls) -> _Launcher:
        with cls._instance_lock:
            # After a fork the parent's launcher thread does not exist in the child: start another.
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def run(self, task: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        self._tasks.put((task, future))
        return future.result()

    def _run(self) -> None:
        while True:
            task, future = self._tasks.get()
            try:
                future.set_result(task())
            except BaseException as exc:
                future.set_exception(exc)
