"""Every scenario of the benchmark report runs, at tiny sizes, against the session's ZooKeeper.

The full run (``bash scripts/bench.sh``) takes minutes and is not part of the suite; this keeps each
scenario's code working. No figure is asserted: on a shared machine they are noise at these sizes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_every_benchmark_scenario_runs_at_tiny_sizes(zk_hosts: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "report.py", "--smoke", "--hosts", zk_hosts, "--out", str(tmp_path)],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = (tmp_path / "benchmarks.md").read_text()
    scenarios = (
        "hot path",
        "stats() stall",
        "memory",
        "threads",
        "initial load",
        "one change among",
        "churn",
    )
    for scenario in scenarios:
        assert f"| {scenario}" in written, scenario
    assert "baseline A" in written and "baseline B" in written
    assert "Machine:" in written and "Command:" in written
