"""Server-side charts for experiment reports, drawn from the report dict alone.

matplotlib's object-oriented API (``Figure`` + an Agg or SVG canvas) is used instead of pyplot:
no GUI backend is ever selected, no global figure registry grows in a long-running web
process, and nothing is fetched from the network. SVG keeps text as text (``svg.fonttype
"none"``) so the charts stay small, sharp and searchable inside the HTML page. Those settings
are process-global rcParams, so rendering holds a lock: a threaded server stays correct.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable
from datetime import date
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = ["CHART_TITLES", "daily_assignment_chart", "latency_chart", "lift_chart", "render_charts"]

#: Chart keys in page order, with the caption the HTML page shows under each.
CHART_TITLES = {
    "lift": "Relative change of each metric versus control, with its confidence interval",
    "latency": "Distribution of per-device typical latency (geometric mean), per arm",
    "daily": "Units assigned per day, per arm",
}
_GOOD, _BAD, _NEUTRAL = "#1a7f37", "#cf222e", "#57606a"
_ARM_COLOURS = ("#0969da", "#bf8700", "#8250df", "#1a7f37", "#cf222e", "#57606a")
_LIFT_AXIS_MAX = 300.0  # percent; wider intervals are cut at the edge and marked with an arrow
_RENDER_LOCK = threading.Lock()  # rc_context mutates global rcParams
_RC = {
    "svg.fonttype": "none",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "text.usetex": False,
}


def _plain(text: str) -> str:
    """User text for matplotlib: '$' would start mathtext (and can raise), so escape it."""
    return str(text).replace("$", r"\$")


def _arm_colour(report: dict[str, Any], arm: str) -> str:
    arms = list(report["arms"])
    return _ARM_COLOURS[arms.index(arm) % len(_ARM_COLOURS)] if arm in arms else _NEUTRAL


def _legend_below(ax: Any) -> None:
    """Arm legend under the axes: it never covers data or the title, whatever the names."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, frameon=False, fontsize=9)


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=_NEUTRAL)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def lift_chart(report: dict[str, Any], fig: Figure) -> None:
    """Forest plot: relative lift in percent with its interval, one row per metric x arm.

    Green/red mark a change that is significant after correction and good/bad for users;
    grey is not significant. Guardrail rows say so in their label.
    """
    rows = [m for m in report["metrics"] if m.get("lift") is not None]
    level = report.get("confidence_level", 0.95)
    ax = fig.add_subplot()
    ax.set_title(f"Lift vs control '{_plain(report['control'])}' ({level:.0%} CI)", loc="left")
    if not rows:
        _empty(ax, "No metric has a lift yet (no data, or the control value is 0).")
        return
    several_arms = len(report["arms"]) > 2
    labels, y = [], list(range(len(rows)))[::-1]
    lows, highs = [], []
    for yi, m in zip(y, rows):
        label = m.get("label") or m["metric"]
        if several_arms:
            label += f" [{m['arm']}]"
        if m["guardrail"]:
            label += " (guardrail)"
        labels.append(_plain(label))
        lift = 100 * m["lift"]
        lo, hi = (100 * v for v in m["lift_ci95"]) if m.get("lift_ci95") else (lift, lift)
        colour = {"better": _GOOD, "worse": _BAD}.get(m.get("verdict"), _NEUTRAL)
        # A rate cannot fall by more than 100%; a delta-method bound below that is noise.
        lo_c, hi_c = min(max(lo, -100.0), _LIFT_AXIS_MAX), min(hi, _LIFT_AXIS_MAX)
        lift_c = min(lift, _LIFT_AXIS_MAX)
        ax.plot([lo_c, hi_c], [yi, yi], color=colour, linewidth=2.5, solid_capstyle="butt")
        if lift <= _LIFT_AXIS_MAX:
            ax.plot([lift], [yi], "o", color=colour, markersize=7)
        if hi > _LIFT_AXIS_MAX:
            ax.plot([_LIFT_AXIS_MAX], [yi], ">", color=colour, markersize=8)
        ax.annotate(f"{lift:+.1f}%", (min(lift, _LIFT_AXIS_MAX), yi), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8, color=colour)
        lows.append(min(lo_c, lift_c))
        highs.append(max(hi_c, lift_c))
    ax.axvline(0, color="black", linewidth=1)
    span = max(max(highs), 0) - min(min(lows), 0)
    pad = 0.08 * span if span else 1.0
    ax.set_xlim(min(min(lows), 0) - pad, max(max(highs), 0) + pad)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(y, labels)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("Relative change vs control (%) — left of 0 is lower")
    handles = [Line2D([], [], color=c, marker="o", linewidth=2.5, label=t)
               for c, t in ((_GOOD, "better (significant)"), (_BAD, "worse (significant)"),
                            (_NEUTRAL, "not significant"))]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3,
              fontsize=8, frameon=False)


def latency_chart(report: dict[str, Any], fig: Figure) -> None:
    """ECDF of each device's geometric-mean latency, per arm, on a log axis.

    Devices, not inference rows, are the units compared by the latency test, so the chart
    shows the same thing: how typical latency is spread across devices.
    """
    ax = fig.add_subplot()
    ax.set_title("Per-device latency (geometric mean of each device)", loc="left")
    drawn = False
    for arm, lat in report["latency"].items():
        pct = lat.get("device_geomean_percentiles_ms")
        if not pct:
            continue
        drawn = True
        ax.step(pct, list(range(len(pct))), where="post", color=_arm_colour(report, arm),
                linewidth=2, label=_plain(f"{arm} ({lat['devices']} devices)"))
    if not drawn:
        _empty(ax, "No latency data yet.")
        return
    ax.set_xscale("log")
    # Plain millisecond labels at 1-2-5 steps read better than powers of ten.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 100)
    ax.set_xlabel("Device geometric-mean latency (ms, log scale)")
    ax.set_ylabel("Devices at or below (%)")
    ax.axhline(50, color=_NEUTRAL, linewidth=0.8, linestyle=":")
    ax.axhline(90, color=_NEUTRAL, linewidth=0.8, linestyle=":")
    _legend_below(ax)


def daily_assignment_chart(report: dict[str, Any], fig: Figure) -> None:
    """Units assigned per UTC day and arm: bars for short experiments, lines for long ones."""
    ax = fig.add_subplot()
    ax.set_title("Units assigned per day", loc="left")
    daily = report["daily_assigned"]
    days = [date.fromisoformat(d) for d in daily["days"]]
    if not days:
        _empty(ax, "No units assigned yet.")
        return
    arms = list(daily["arms"])
    if len(days) <= 21:
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            xs = [k + (i - (len(arms) - 1) / 2) * width for k in range(len(days))]
            ax.bar(xs, daily["arms"][arm], width=width, color=_arm_colour(report, arm),
                   label=_plain(arm))
        step = max(1, math.ceil(len(days) / 10))
        ticks = list(range(0, len(days), step))
        ax.set_xticks(ticks, [days[k].strftime("%b %d") for k in ticks])
        ax.grid(axis="x", visible=False)
    else:
        for arm in arms:
            ax.plot(days, daily["arms"][arm], marker=".", color=_arm_colour(report, arm),
                    label=_plain(arm))
        fig.autofmt_xdate()
    ax.set_xlabel("Day assigned (UTC)")
    ax.set_ylabel("Units (install ids)")
    _legend_below(ax)


_CHARTS: dict[str, Callable[[dict[str, Any], Figure], None]] = {
    "lift": lift_chart,
    "latency": latency_chart,
    "daily": daily_assignment_chart,
}


def _render(draw: Callable[[dict[str, Any], Figure], None], report: dict[str, Any], key: str,
            fmt: str) -> str | bytes:
    n_rows = sum(1 for m in report["metrics"] if m.get("lift") is not None)
    height = max(3.2, 1.6 + 0.45 * n_rows) if key == "lift" else 3.6
    # svg.hashsalt makes the SVG ids deterministic and distinct per chart, so several charts
    # inlined in one page never share a clip-path id.
    with _RENDER_LOCK, matplotlib.rc_context({**_RC, "svg.hashsalt": f"modeldrop-{key}"}):
        fig = Figure(figsize=(8, height), layout="constrained")
        draw(report, fig)
        buf = io.BytesIO()
        if fmt == "svg":
            FigureCanvasSVG(fig)
            fig.savefig(buf, format="svg", metadata={"Date": None})
            text = buf.getvalue().decode("utf-8")
            return text[text.index("<svg"):]  # drop the XML prolog: it is inlined in HTML
        if fmt == "png":
            FigureCanvasAgg(fig)
            fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
            return buf.getvalue()
    raise ValueError(f"unknown chart format {fmt!r}; use 'svg' or 'png'")


def render_charts(report: dict[str, Any], fmt: str = "svg") -> dict[str, str | bytes]:
    """All report charts: ``{"lift", "latency", "daily"}`` -> SVG text (or PNG bytes).

    Args:
        report: A dict from `build_report` (or its JSON round-trip).
        fmt: ``"svg"`` (inline in HTML) or ``"png"``.
    """
    return {key: _render(draw, report, key, fmt) for key, draw in _CHARTS.items()}
