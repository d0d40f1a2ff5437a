"""What zklb objects made before ``os.fork()`` do in the child.

The child of a fork has a copy of the parent's memory but only the thread that forked: kazoo's
connection thread and zklb's worker are gone, and a lock another thread held at that instant stays held
for ever. The parent's ZooKeeper session is not the child's to use (two processes writing on one
session corrupt it) nor to end (a close would delete the parent's ephemeral znodes).

Rules of this module:

- Every zklb object that holds locks, threads or a client registers itself with `track`; the hook run
  in the child (``os.register_at_fork``) calls each one's ``_after_fork_in_child()``, which re-creates
  its locks (it must not take any: they may be held for ever), forgets the parent's client, worker and
  threads, and does no I/O. Live objects are kept in a weak set, so tracking never keeps one alive.
- Module-level state (the table of workers per client) is reset by functions given to `on_child`, first.
- What must talk to ZooKeeper again (an owned client's watcher re-following a new session) is returned
  by the hook as a callable, and all of them run afterwards on one short-lived background thread: the
  forking call returns at once, and a child whose ZooKeeper is unreachable never hangs on it.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["ForkAware", "generation", "on_child", "track"]

log = logging.getLogger("zklb")

Resume = Callable[[], object]


class ForkAware(Protocol):
    """An object that puts itself right in the child of a fork."""

    def _after_fork_in_child(self) -> Resume | None:
        """Re-create locks, drop the parent's client and threads; return what to resume, if anything."""


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_resets: list[Callable[[], object]] = []
_generation = 0


def track(obj: ForkAware) -> None:
    """Have ``obj._after_fork_in_child()`` called in the child of every later fork (weakly held)."""
    _live.add(obj)


def on_child(reset: Callable[[], object]) -> None:
    """Call ``reset()`` in the child of every fork, before any tracked object's hook."""
    _resets.append(reset)


def generation() -> int:
    """How many forks this process descends from since zklb was imported (0 in the original process)."""
    return _generation


def _after_fork_in_child() -> None:
    global _generation  # noqa: PLW0603 - one counter per process, by design
    _generation += 1
    for reset in _resets:
        _guarded(reset)
    resumes: list[Callable[..., object]] = []
    # Every hook runs before any resume: a watcher resuming finds its client handle already put right.
    for obj in list(_live):
        resume = _guarded(obj._after_fork_in_child)
        if callable(resume):
            resumes.append(resume)
    if resumes:
        threading.Thread(target=_resume_all, args=(resumes,), name="zklb-after-fork", daemon=True).start()


def _resume_all(resumes: list[Callable[..., object]]) -> None:
    for resume in resumes:
        _guarded(resume)


def _guarded(func: Callable[[], object]) -> object:
    try:
        return func()
    except Exception:  # one object's failure must not leave the others (or the child) broken
        log.exception("zklb: putting %r right after fork failed", func)
        return None


os.register_at_fork(after_in_child=_after_fork_in_child)
