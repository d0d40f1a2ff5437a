"""Every scenario of the benchmark report runs, at tiny sizes, against the session's ZooKeeper.

The full run (``bash scripts/bench.sh``) takes minutes and is not part of the suite; this keeps each
scenario's code working. No figure is asserted: on a shared machine they are noise at these sizes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from zklb.testing import ZooKeeperEnsemble

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
        "fan-out",
        "transport",
    )
    for scenario in scenarios:
        assert f"| {scenario}" in written, scenario
    assert "baseline A" in written and "baseline B" in written
    assert "Machine:" in written and "Command:" in written


def test_fan_out_reconnect_storm_runs_at_tiny_sizes(
    healthy_ensemble: ZooKeeperEnsemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storm restarts a member, which the report run above (given ``--hosts``) cannot do."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from report_model import Report  # noqa: PLC0415 (benchmarks/ is not a package)
    from scenario_fanout import READERS, fanout  # noqa: PLC0415

    report = Report()
    writer = KazooClient(hosts=healthy_ensemble.hosts, timeout=30)
    writer.start(timeout=30)
    try:
        fanout(report, healthy_ensemble.hosts, writer, clients=2, n=3, changes=2, ensemble=healthy_ensemble)
    finally:
        writer.stop()
        writer.close()
    storms = [row for row in report.rows if "storm" in row.measure]
    assert len(storms) == len(READERS)
    for row in storms:
        assert row.value.endswith("2/2"), row  # every client reconnected to another member
        assert "NOT intact" not in row.measure, row
