"""The benchmark report: every scenario in one run, printed as a table and written to docs/benchmarks.md.

Each figure is a ratio to an alternative measured in the same run on the same machine (absolute times on
a shared machine are noise): the hot path against a bare Python round-robin method, ZooKeeper scenarios
against a raw kazoo read and against what a user would write instead, **baseline A** (kazoo
``ChildrenWatch`` plus a ``get()`` of every child on each change) and **baseline B** (kazoo
``TreeCache``), on a real local 3-node ensemble started by ``zklb.testing``. Run::

    bash scripts/bench.sh                      # the full run (a few minutes)
    python benchmarks/report.py --smoke --out /tmp/bench   # every scenario at tiny sizes (CI)

``--hosts`` uses a running ZooKeeper instead of starting an ensemble; ``--only one_change,churn`` runs
some scenarios alone (``--help`` lists them). Plots need the ``bench`` extra
(matplotlib); without it the report is written without them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

from kazoo.client import KazooClient
from report_model import Report
from scenario_churn import churn
from scenario_fanout import fanout
from scenario_transport import transport_overhead
from scenarios_local import hot_path, memory, stats_stall, threads
from scenarios_zk import initial_load, one_change

import zklb
from zklb.testing import ZooKeeperEnsemble

#: The scenarios, in the order they run (``--only`` picks some); the last five need ZooKeeper.
SCENARIOS = (
    "hot_path",
    "stats_stall",
    "memory",
    "threads",
    "initial_load",
    "one_change",
    "churn",
    "fanout",
    "transport",
)
ZOOKEEPER_SCENARIOS = frozenset(SCENARIOS[4:])


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU(s), {model}; load average {load}"


def plot(
    report: Report, out: Path, curves: dict[str, dict[int, float]], rates: dict[str, dict[int, float]]
) -> None:
    try:
        import matplotlib  # noqa: PLC0415 (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
        return
    figures = out / "benchmarks"
    figures.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [name for name in curves if name.startswith("acquire()") or name.startswith("get_server()")]
    sizes = sorted({n for name in names for n in curves[name]})
    width = 0.8 / max(1, len(sizes))
    for k, n in enumerate(sizes):
        ax.barh(
            [i + k * width for i in range(len(names))],
            [curves[name].get(n, 0) for name in names],
            width,
            label=f"n={n:,}",
        )
    ax.set_yticks([i + width * (len(sizes) - 1) / 2 for i in range(len(names))], names, fontsize=7)
    ax.set_xlabel("cost / bare Python round-robin method (same run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(figures / "hot_path.png", dpi=110)
    plt.close(fig)
    report.plots.append(("benchmarks/hot_path.png", "Hot-path cost as a ratio to a bare Python method"))
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, curve in rates.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xlabel("threads")
    ax.set_ylabel("acquire() picks/s / 1 thread")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(figures / "threads.png", dpi=110)
    plt.close(fig)
    report.plots.append(("benchmarks/threads.png", "Throughput of acquire() by thread count"))


def write_markdown(report: Report, out: Path, argv: list[str]) -> Path:
    lines = [
        "# Benchmarks",
        "",
        "Written by `bash scripts/bench.sh` (`benchmarks/report.py`); every figure is a ratio to an",
        "alternative measured in the same run. Reproduce with the same command; each scenario's code is",
        "the function of the same name in `benchmarks/scenarios_local.py` (no ZooKeeper),",
        "`benchmarks/scenarios_zk.py` or `benchmarks/scenario_*.py` (a real 3-node ensemble, started by",
        "`zklb.testing`; the transport rows use it only to register the local HTTP server).",
        "Baseline A is kazoo `ChildrenWatch` plus a `get()` of every child on each change; baseline B is",
        "kazoo `TreeCache`; raw is a pipelined `get_async` read, or a one-shot kazoo watch, in the same run.",
        "",
        f"- Machine: {machine()}",
        f"- Python {platform.python_version()}, zklb {zklb.__version__}, kazoo {version('kazoo')}",
        f"- Command: `bash scripts/bench.sh` or, in `benchmarks/`, `python report.py {' '.join(argv)}`",
        f"- Parameters: {', '.join(f'{k}={v}' for k, v in report.params.items())}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| scenario | measure | value | target | |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report.rows:
        verdict = "" if row.met is None else ("met" if row.met else "**not met**")
        lines.append(f"| {row.scenario} | {row.measure} | {row.value} | {row.target} | {verdict} |")
    lines.append("")
    for name, caption in report.plots:
        lines += [f"![{caption}]({name})", ""]
    path = out / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="every scenario at tiny sizes (seconds)")
    parser.add_argument("--hosts", help="a running ZooKeeper to use instead of starting a 3-node ensemble")
    parser.add_argument("--out", default="docs", help="directory for benchmarks.md and the plots")
    parser.add_argument("--size", type=int, default=None, help="instances for the ZooKeeper scenarios")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(SCENARIOS),
        metavar="NAME,...",
        help=f"run only these scenarios, out of {', '.join(SCENARIOS)} (default: all)",
    )
    args = parser.parse_args(argv)
    unknown = args.only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    only = args.only
    smoke = args.smoke
    sizes = [20, 200] if smoke else [1_000, 10_000]
    n = args.size or (30 if smoke else 10_000)
    report = Report()
    report.params = {
        "hot-path sizes": "/".join(map(str, sizes)),
        "ZooKeeper instances": n,
        "calls per burst": 200 if smoke else 500,
        "interleaved rounds": 3 if smoke else 120,
        "changes": 6 if smoke else 30,
        "fan-out clients/instances/changes": "3/5/2" if smoke else "200/100/10",
        "HTTP GETs per burst x paired rounds": "50x2" if smoke else "300x41",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Short bursts, many rounds: on a shared machine a burst the scheduler interrupts is an outlier
    # the median of the per-round ratios ignores, where a long burst would rarely escape one.
    curves: dict[str, dict[int, float]] = {}
    rates: dict[str, dict[int, float]] = {}
    if "hot_path" in only:
        curves = hot_path(report, sizes, 200 if smoke else 500, 3 if smoke else 120)
    if "stats_stall" in only:
        stats_stall(report, sizes[-1], 0.05 if smoke else 1.0)
    if "memory" in only:
        memory(report, sizes[-1])
    if "threads" in only:
        rates = threads(report, sizes[0], 0.05 if smoke else 0.5, 1 if smoke else 3)

    def zookeeper(hosts: str, ensemble: ZooKeeperEnsemble | None) -> None:
        writer = KazooClient(hosts=hosts, timeout=30)
        writer.start(timeout=30)
        try:
            if "initial_load" in only:
                initial_load(report, hosts, writer, n)
            if "one_change" in only:
                one_change(report, hosts, writer, n, 6 if smoke else 30)
            if "churn" in only:
                churn(report, hosts, writer, n, rate=20 if smoke else 100, seconds=1 if smoke else 30)
            if "fanout" in only:
                fanout(
                    report,
                    hosts,
                    writer,
                    clients=3 if smoke else 200,
                    n=5 if smoke else 100,
                    changes=2 if smoke else 10,
                    ensemble=ensemble,
                )
            if "transport" in only:
                transport_overhead(report, hosts, 50 if smoke else 300, 2 if smoke else 41)
        finally:
            writer.stop()
            writer.close()

    if not only.isdisjoint(ZOOKEEPER_SCENARIOS):
        if args.hosts:
            zookeeper(args.hosts, None)  # no member to restart: the fan-out's storm is left out
        else:
            with ZooKeeperEnsemble(size=3) as ensemble:
                zookeeper(ensemble.hosts, ensemble)
    if curves or rates:
        plot(report, out, curves, rates)
    print(f"\nwritten: {write_markdown(report, out, argv if argv is not None else sys.argv[1:])}")


if __name__ == "__main__":
    main()
