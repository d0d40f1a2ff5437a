"""The benchmark report's table: one `Row` per figure, collected in a `Report` (``report.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the report: a scenario, what was measured, the figure, its target and the verdict."""

    scenario: str
    measure: str
    value: str
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    params: dict[str, object] = field(default_factory=dict)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)

    def add(self, scenario: str, measure: str, value: str, target: str = "", met: bool | None = None) -> None:
        row = Row(scenario, measure, value, target, met)
        self.rows.append(row)
        verdict = "" if met is None else ("met" if met else "NOT met")
        print(f"{scenario:<26} {measure:<58} {value:>16}  {target:<12} {verdict}", flush=True)
