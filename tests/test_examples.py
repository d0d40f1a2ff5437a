"""Every file in examples/ runs as a user would run it and exits 0 (so none can rot unnoticed).

Each starts its own single-node ZooKeeper with `zklb.testing` (none is given through ``ZKLB_HOSTS``);
they run side by side to keep the test short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


def test_every_example_runs_and_exits_0() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ZKLB_HOSTS"}
    procs = {
        path.name: subprocess.Popen(
            [sys.executable, str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for path in EXAMPLES
    }
    failed = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0 or not out.strip():
                failed[name] = f"exit {proc.returncode}\n{out[-2000:]}\n{err[-2000:]}"
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert not failed, "\n\n".join(f"{name}: {text}" for name, text in failed.items())
