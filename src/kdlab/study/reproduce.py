"""``kdlab reproduce``: a paper's experiments as bundled recipes, each result printed beside the paper's.

A reproduction is registered in :data:`REPRODUCTIONS` with its recipes and a function that runs
them over seeds and returns :class:`Row` s: a measured quantity per seed beside the paper's figure.
This module judges each row the same way (:func:`verdict`) and renders the rows as Markdown and
JSON, so every reproduction says "reproduced" by one stated rule.

The rule: the paper reports one run, so its figure is compared with what one more run of ours
would give: the 95% prediction interval ``mean ± t(0.975, n−1) · s · √(1 + 1/n)`` over our ``n``
seeds. Inside it: reproduced within seed noise. Outside: the gap (ours − paper) is reported.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..registry import Registry
from .stats import paired, prediction_interval, summarize


@dataclass
class Row:
    """One result: ``values`` per seed beside the paper's figure (None: the paper gives none).

    ``kind``: ``result`` (judged against the paper), ``difference`` (a paired difference over seeds,
    with its confidence interval) or ``reference`` (shown, not judged: e.g. an offset chosen on the
    test set).
    """

    key: str
    label: str
    paper: Optional[float]
    values: List[float]
    unit: str = ""
    kind: str = "result"
    note: str = ""
    stats: Dict[str, Any] = field(default_factory=dict)


def verdict(row: Row) -> str:
    """``reproduced`` when the paper's figure lies in the prediction interval of one run, else the gap."""
    if row.paper is None or row.kind == "reference":
        return "reference (not judged)"
    pi = prediction_interval(row.values)
    mean = summarize(row.values).mean
    gap = mean - row.paper
    if pi is None:
        return f"one seed: not judged (ours − paper = {gap:+.4g}{row.unit})"
    if pi[0] <= row.paper <= pi[1]:
        return "reproduced (within seed noise)"
    return f"not reproduced: ours − paper = {gap:+.4g}{row.unit}"


def judge(rows: Sequence[Row]) -> List[Row]:
    """Fill each row's ``stats``: mean, std, 95% t-interval of the mean, prediction interval, verdict;
    for a paired difference, also the paired t-test's p-value is filled by :func:`paired_row`."""
    for row in rows:
        s = summarize(row.values)
        pi = prediction_interval(row.values)
        row.stats.update(n=s.n, mean=s.mean, std=s.std, ci95=[s.ci_low, s.ci_high],
                         prediction95=list(pi) if pi is not None else None, verdict=verdict(row))
    return list(rows)


def paired_row(key: str, label: str, a: Sequence[float], b: Sequence[float], paper: Optional[float], unit: str = "",
               note: str = "") -> Row:
    """The seed-matched difference ``a − b`` (``kdlab.study.stats.paired``) as a row, with its p-value."""
    cmp = paired(a, b)
    row = Row(key, label, paper, [x - y for x, y in zip(a, b)], unit, "difference", note)
    row.stats["paired_t"] = {"t": cmp.t_stat, "p": cmp.p_value}
    return row


def _fmt(x: Optional[float], digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: paper, ours (mean ± std, 95% interval), per seed, verdict."""
    lines = ["| result | paper | kdlab: mean ± std | 95% interval of the mean | per seed | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        st = r.stats
        ci = st.get("ci95") or [float("nan")] * 2
        extra = f"; paired t p = {_fmt(st['paired_t']['p'], 2)}" if "paired_t" in st else ""
        per_seed = ", ".join(_fmt(v) for v in r.values)
        label = r.label + (f" ({r.note})" if r.note else "")
        lines.append(f"| {label} | {_fmt(r.paper)}{r.unit if r.paper is not None else ''} | {_fmt(st['mean'])} ± {_fmt(st['std'], 2)}{r.unit} "
                     f"| [{_fmt(ci[0])}, {_fmt(ci[1])}]{extra} | {per_seed} | {st['verdict']} |")
    return "\n".join(lines)


@dataclass
class ReproductionResult:
    """What a reproduction returns: the judged rows, the protocol and its deviations, timings, host."""

    name: str
    title: str
    seeds: List[int]
    rows: List[Row]
    deviations: List[str]
    protocol: Dict[str, Any]
    wall_seconds: float
    phases: Dict[str, float] = field(default_factory=dict)
    per_seed: List[Dict[str, Any]] = field(default_factory=list)
    host: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def markdown(self) -> str:
        dev = "\n".join(f"- {d}" for d in self.deviations)
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in self.phases.items())
        host = self.host
        return (f"# {self.title}\n\n{markdown_table(self.rows)}\n\n"
                f"Seeds: {', '.join(map(str, self.seeds))}. Verdict rule: the paper's single run is compared with the "
                "95% prediction interval of one more run of ours (mean ± t·s·√(1 + 1/n)); inside it counts as "
                "reproduced within seed noise. Errors are counted on the test images after the last epoch "
                "(no epoch is chosen on the test set).\n\n"
                f"## Deviations from the paper\n\n{dev}\n\n"
                f"## How this was measured\n\nWall time {self.wall_seconds:.0f} s ({phases}) on {host.get('cpu', '?')}, "
                f"{host.get('threads', '?')} intra-op thread(s), torch {host.get('torch', '?')}, Python {host.get('python', '?')}.\n")


def write_result(result: ReproductionResult, out: Path) -> Path:
    """``results.json`` and ``report.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=2, default=float) + "\n", encoding="utf-8")
    (out / "report.md").write_text(result.markdown(), encoding="utf-8")
    return out


def host_facts() -> Dict[str, Any]:
    """The machine a reproduction ran on, stated beside its wall time."""
    import torch  # start-up time: kept off the module's import (torch)

    from ..device import cpu_model  # start-up time: imports torch

    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


@dataclass
class Settings:
    """A reproduction command's options: data location, recipe overrides (applied to every recipe),
    epochs, teacher cache, progress, and where its one-line progress messages go."""

    data_dir: Optional[str] = None
    download: bool = True
    overrides: Sequence[str] = ()
    teacher_epochs: Optional[int] = None
    epochs: Optional[int] = None
    teacher_cache: Optional[str] = None
    progress: Optional[bool] = None
    log: Callable[[str], None] = field(default=lambda _line: None)


@dataclass
class Reproduction:
    """A registered reproduction: its recipes, the paper's section, and the function that runs it.

    ``run(seeds, out, settings)`` returns a :class:`ReproductionResult` (``settings``: a
    :class:`Settings`); ``quick`` holds the ``teacher`` and ``student`` epochs of a ``--quick`` run.
    """

    name: str
    title: str
    description: str
    recipes: List[str]
    run: Callable[..., ReproductionResult]
    quick: Dict[str, int] = field(default_factory=dict)


REPRODUCTIONS: Registry[Reproduction] = Registry("reproduction")


def register_reproduction(rep: Reproduction) -> Reproduction:
    REPRODUCTIONS.register(rep.name)(rep)
    return rep
