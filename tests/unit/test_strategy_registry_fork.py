"""The strategy registry after a fork made while another thread held its lock."""

from __future__ import annotations

import os
import select

import pytest

from zklb import strategies
from zklb.strategies import RoundRobin, register_strategy


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_register_strategy_in_a_child_forked_while_the_lock_was_held() -> None:
    read_end, write_end = os.pipe()
    with strategies._lock:  # as another thread of the parent might hold it at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: without a fresh lock, this call would wait for ever
            try:
                register_strategy("forked_child_rr", RoundRobin, replace=True)
                os.write(write_end, b"ok")
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], 10.0)
            answer = os.read(read_end, 2) if ready else b""
        finally:
            os.close(read_end)
            if not ready:
                os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert answer == b"ok", "the child could not register a strategy: the inherited lock stayed held"
