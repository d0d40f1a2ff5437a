"""Shutting down on a signal: drain, deregister, then let the signal do what it would have done.

Rules of this module:

- The Python-level handler never blocks. It starts the shutdown on a thread of its own and returns at
  once, so whatever the main thread was doing when the signal arrived (holding a zklb lock, serving a
  request) goes on: in-flight requests finish during the drain, and a lock the main thread holds is
  released as usual instead of deadlocking a handler that waits for it.
- When the shutdown is done its thread sends the same signal to the process again. The handler sees
  the shutdown finished and *chains*: it calls the handler that was installed before, or, where that
  was the default action, restores it and re-raises the signal, so the process ends exactly as the
  unhandled signal would have ended it (its exit status says "killed by SIGTERM").
- A second signal while draining cuts the drain short (the operator insists); deletion still happens.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from zklb.errors import ConfigurationError

__all__ = ["Handler", "chain", "install_shutdown"]

log = logging.getLogger("zklb")

#: ``shutdown(cut_short)``: drain (waiting until ``cut_short`` is set at most), then deregister.
Shutdown = Callable[[threading.Event], None]
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def install_shutdown(signum: int, shutdown: Shutdown, *, name: str) -> None:
    """Install a handler for ``signum`` that runs ``shutdown`` on a thread, then chains.

    Only the main thread may install signal handlers (Python's rule): elsewhere `ConfigurationError`.
    ``name`` names the thread and the log lines.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError(
            "close_on_signal() must be called from the main thread (Python runs signal handlers there only)"
        )
    try:
        signum = signal.Signals(signum)
    except ValueError as exc:
        raise ConfigurationError(f"not a signal number: {signum!r}") from exc
    handler = _ShutdownHandler(signum, shutdown, name)
    try:
        handler.previous = signal.signal(signum, handler)
    except (OSError, ValueError) as exc:  # SIGKILL, SIGSTOP: no handler can be installed
        raise ConfigurationError(f"cannot handle {signum.name}: {exc}") from exc


class _ShutdownHandler:
    """The installed handler: first call starts the shutdown, the call after it finished chains."""

    def __init__(self, signum: signal.Signals, shutdown: Shutdown, name: str) -> None:
        self.signum = signum
        self.previous: Handler = signal.SIG_DFL
        self._shutdown = shutdown
        self._name = name
        self._cut_short = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # On the main thread, between two bytecodes of whatever it was running: start or chain, never wait.
        if self._done.is_set():
            self._chain(signum, frame)
        elif self._thread is None:
            log.info("%s: %s received, draining and deregistering", self._name, self.signum.name)
            self._thread = threading.Thread(target=self._run, name=f"zklb-shutdown-{self._name}")
            self._thread.start()
        else:
            log.info("%s: %s again, cutting the drain short", self._name, self.signum.name)
            self._cut_short.set()

    def _run(self) -> None:
        try:
            self._shutdown(self._cut_short)
        except Exception:  # the signal must still end the process
            log.exception("%s: shutdown on %s failed", self._name, self.signum.name)
        finally:
            self._done.set()
            # The handler runs on the main thread only: wake it there to chain.
            os.kill(os.getpid(), self.signum)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        chain(self.previous, signum, frame)


def chain(previous: Handler, signum: int, frame: FrameType | None) -> None:
    """Do what ``previous`` (a handler `signal.signal` returned) would have done with the signal.

    A Python handler is called; ``SIG_IGN`` does nothing; the default action (``SIG_DFL``, or ``None``
    for a handler not installed from Python) is restored and the signal raised again, so the process
    ends as if no handler had been there. On the main thread only, as every signal handler.
    """
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
