"""The experiment report as one self-contained HTML page.

Inline CSS and inline SVG only — no scripts, fonts, images or links to fetch — so the page can
be served by the dashboard, saved, mailed or attached to a ticket and still render the same.
Every string that came from a user (experiment and arm names, health messages that quote
them) goes through ``html.escape``; the SVG comes from our own renderer, which escapes its
text itself.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from registry.reports.charts import CHART_TITLES

__all__ = ["render_report_html"]

_CSS = """
:root { color-scheme: light; --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg2:#f6f8fa;
        --good:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1240px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-word; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.banner { border-radius: 6px; padding: 10px 14px; margin: 8px 0; border: 1px solid; }
.banner.error { background: #ffebe9; border-color: #ff8182; }
.banner.warning { background: #fff8c5; border-color: #d4a72c; }
.banner.info { background: #ddf4ff; border-color: #54aeff; }
.banner.ok { background: #dafbe1; border-color: #4ac26b; }
.banner b { margin-right: 6px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 4px; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 5px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th:first-child, td:first-child, th.l, td.l { text-align: left; }
th { background: var(--bg2); font-weight: 600; }
td.name { white-space: normal; overflow-wrap: break-word; text-align: left; }
td.metric { min-width: 11em; }
.scroll { overflow-x: auto; }
.muted, .ci { color: var(--muted); }
.ci { font-size: 12px; }
tr.sig-good td.effect { color: var(--good); font-weight: 600; }
tr.sig-bad td.effect { color: var(--bad); font-weight: 600; }
.badge { display: inline-block; white-space: nowrap; font-size: 11px; padding: 1px 6px; border-radius: 10px;
         border: 1px solid var(--line); background: var(--bg2); margin-left: 4px; }
.badge.guardrail { border-color: #d4a72c; background: #fff8c5; color: var(--warn); }
.badge.good { border-color: #4ac26b; background: #dafbe1; color: var(--good); }
.badge.bad { border-color: #ff8182; background: #ffebe9; color: var(--bad); }
figure { margin: 16px 0; }
figure svg, figure img { width: 100%; max-width: 900px; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.notes { color: var(--muted); font-size: 13px; }
.notes li { margin: 3px 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _value(m: dict[str, Any], v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f} ms" if m["unit"] == "ms" else f"{100 * v:.2f}%"


def _interval(m: dict[str, Any], ci: list[float] | None, kind: str) -> str:
    if not ci:
        return ""
    lo, hi = ci
    if kind == "value":
        text = f"{lo:.1f}–{hi:.1f} ms" if m["unit"] == "ms" else f"{100 * lo:.2f}–{100 * hi:.2f}%"
    elif kind == "ratio":
        text = f"×{lo:.3f} to ×{hi:.3f}"
    elif kind == "lift":
        text = f"{100 * lo:+.1f}% to {100 * hi:+.1f}%"
    else:  # a difference of proportions, in percentage points
        text = f"{100 * lo:+.2f} to {100 * hi:+.2f} pp"
    return f'<div class="ci">[{_e(text)}]</div>'


def _diff(m: dict[str, Any]) -> str:
    d = m.get("diff")
    if d is None:
        return "—"
    if m["ci95_of"] == "ratio":
        ratio = m.get("ratio")
        head = f"×{ratio:.3f}" if ratio is not None else "—"
        return f"{head} <span class=\"muted\">({d:+.1f} ms)</span>"
    return f"{100 * d:+.2f} pp"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "&lt; 0.0001" if p < 1e-4 else f"{p:.4f}"


def _verdict(m: dict[str, Any]) -> tuple[str, str]:
    """Row class and badge: significant changes say whether they are good or bad for users."""
    verdict = m.get("verdict")
    if verdict not in ("better", "worse"):
        return "", ""
    kind = "good" if verdict == "better" else "bad"
    return f"sig-{kind}", f'<span class="badge {kind}">{verdict}</span>'


def _banners(report: dict[str, Any]) -> str:
    srm = report["srm"]
    parts = []
    if srm["alert"]:
        parts.append(f'<div class="banner error"><b>Sample-ratio mismatch.</b>Assigned units '
                     f'{_e(srm["observed"])} do not match the configured weights {_e(srm["weights"])} '
                     f'(p = {_e(_num(srm["p_value"]))}). Fix assignment or logging before reading '
                     'the metrics.</div>')
    elif srm["p_value"] is not None:
        parts.append(f'<div class="banner ok"><b>Sample ratio OK.</b>Assigned units match the '
                     f'configured split (chi-square p = {_e(_num(srm["p_value"]))}; alert below '
                     f'{_e(srm["threshold"])}).</div>')
    for h in report["health"]:
        if h["code"] == "srm":
            continue  # already the red banner above
        label = {"error": "Problem", "warning": "Warning", "info": "Note"}[h["level"]]
        parts.append(f'<div class="banner {_e(h["level"])}"><b>{label}:</b>{_e(h["message"])}</div>')
    if not report["health"]:
        parts.append('<div class="banner ok"><b>No data-quality warnings.</b></div>')
    return "\n".join(parts)


def _arms_table(report: dict[str, Any]) -> str:
    rows = []
    for name, a in report["arms"].items():
        n = a["assigned"]

        def cell(k: int) -> str:
            share = f' <span class="muted">({100 * k / n:.1f}%)</span>' if n else ""  # noqa: B023 - used in this iteration
            return f"<td>{k}{share}</td>"

        control = ' <span class="badge">control</span>' if name == report["control"] else ""
        rows.append(f'<tr><td class="name">{_e(name)}{control}</td>'
                    f'<td>{100 * a["expected_share"]:.1f}%</td><td>{n}</td>'
                    f'{cell(a["downloaded"])}{cell(a["installed"])}{cell(a["active"])}</tr>')
    return ('<div class="scroll"><table><thead><tr><th>arm</th><th>configured share</th>'
            '<th>assigned</th><th>downloaded</th><th>installed</th><th>active</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _metrics_table(report: dict[str, Any]) -> str:
    rows = []
    for m in report["metrics"]:
        cls, badge = _verdict(m)
        guard = '<span class="badge guardrail">guardrail</span>' if m["guardrail"] else ""
        lift = "—" if m.get("lift") is None else f"{100 * m['lift']:+.1f}%"
        rows.append(
            f'<tr class="{cls}"><td class="name metric">{_e(m.get("label") or m["metric"])}{guard}</td>'
            f'<td class="name">{_e(m["arm"])}</td>'
            f'<td>{_value(m, m["value"])}{_interval(m, m.get("value_ci95"), "value")}</td>'
            f'<td>{_value(m, m["control_value"])}{_interval(m, m.get("control_value_ci95"), "value")}</td>'
            f'<td class="effect">{_diff(m)}{_interval(m, m.get("ci95"), m["ci95_of"])}</td>'
            f'<td class="effect">{lift}{_interval(m, m.get("lift_ci95"), "lift")}</td>'
            f'<td>{_p(m["p_value"])}</td><td>{_p(m["p_value_adjusted"])}{badge}</td>'
            f'<td>{m["n"]} / {m["control_n"]}</td></tr>')
    level = f'{100 * report["confidence_level"]:.0f}%'
    return ('<div class="scroll"><table><thead><tr><th>metric</th><th class="l">arm</th>'
            f'<th>arm value</th><th>control</th><th>difference [{level} CI]</th>'
            f'<th>lift [{level} CI]</th><th>p</th><th>adjusted p</th><th>n / control n</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _latency_table(report: dict[str, Any]) -> str:
    rows = []
    for name, lat in report["latency"].items():
        def q(key: str) -> str:
            v, ci = lat.get(key), lat.get(f"{key}_ci95")  # noqa: B023 - called in this iteration
            if v is None:
                return "<td>—</td>"
            ci_text = f'<div class="ci">[{ci[0]:.1f}–{ci[1]:.1f}]</div>' if ci else ""
            return f"<td>{v:.1f} ms{ci_text}</td>"

        def r(key: str) -> str:
            v, ci = lat.get(key), lat.get(f"{key}_ci95")  # noqa: B023 - called in this iteration
            if v is None:
                return "<td>—</td>"
            ci_text = f'<div class="ci">[×{ci[0]:.3f} to ×{ci[1]:.3f}]</div>' if ci else ""
            return f"<td>×{v:.3f}{ci_text}</td>"

        rows.append(f'<tr><td class="name">{_e(name)}</td><td>{lat["devices"]}</td>'
                    f'<td>{lat["samples"]}</td>{q("p50")}{q("p90")}{r("p50_ratio")}{r("p90_ratio")}</tr>')
    return ('<div class="scroll"><table><thead><tr><th>arm</th><th>devices</th><th>inferences</th>'
            '<th>p50</th><th>p90</th><th>p50 vs control</th><th>p90 vs control</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _figures(charts: dict[str, str | bytes]) -> str:
    parts = []
    for key, chart in charts.items():
        caption = CHART_TITLES.get(key, key)
        if isinstance(chart, bytes):  # PNG: inline as a data URI, still self-contained
            body = (f'<img alt="{_e(caption)}" src="data:image/png;base64,'
                    f'{base64.b64encode(chart).decode("ascii")}">')
        else:
            body = chart
        parts.append(f'<figure id="chart-{_e(key)}">{body}<figcaption>{_e(caption)}</figcaption></figure>')
    return "\n".join(parts) or '<p class="muted">No charts.</p>'


REPORT_CSS = _CSS  # the report's stylesheet, for a page that embeds the report body


def render_report_body(report: dict[str, Any], charts: dict[str, str | bytes]) -> str:
    """The report's sections (summary, data quality, arms, metrics, latency, charts, notes)
    as an HTML fragment for the inside of a ``<body>``; `render_report_html` wraps it."""
    name = _e(report["experiment"])
    level = f'{100 * report["confidence_level"]:.0f}%'
    return f"""<header id="summary">
<h1>Experiment report: {name}</h1>
<p class="sub">{report["units"]} units assigned across {len(report["arms"])} arms; control arm
<b>{_e(report["control"])}</b>. Intervals are {level} confidence intervals; p-values are two-sided;
adjusted p-values are Holm-corrected across all non-guardrail metrics and arms.</p>
</header>
<section id="health">
<h2>Data quality</h2>
{_banners(report)}
</section>
<section id="arms">
<h2>Arms (intent-to-treat: every unit as assigned)</h2>
{_arms_table(report)}
</section>
<section id="metrics">
<h2>Metrics versus control</h2>
{_metrics_table(report)}
<p class="notes">Rates are per assigned unit. Latency compares each device's geometric-mean latency
(difference column: ratio of geometric means). "pp" = percentage points.</p>
</section>
<section id="latency">
<h2>Latency percentiles (all inferences pooled; intervals from a device-level bootstrap)</h2>
{_latency_table(report)}
</section>
<section id="charts">
<h2>Charts</h2>
{_figures(charts)}
</section>
<section id="notes" class="notes">
<h2>How to read this report</h2>
<ul>
<li>A metric is marked better/worse only when its adjusted p-value is below {_e(report["alpha"])}.
Guardrail metrics are not corrected for multiple comparisons, so they alarm early.</li>
<li>Looking at the report repeatedly and stopping when something turns significant raises the
false-positive rate above {_e(report["alpha"])}: decide the sample size or duration in advance.</li>
<li>Latency and accuracy come only from devices that ran the model; if an arm changes which devices
get that far (see install failures), those comparisons are among different kinds of devices.</li>
</ul>
</section>
"""


def render_report_html(report: dict[str, Any], charts: dict[str, str | bytes]) -> str:
    """Render a report (from `build_report`) and its charts (from `render_charts`) as HTML.

    Args:
        report: The report dict.
        charts: Chart key -> SVG text (inlined) or PNG bytes (inlined as a data URI).

    Returns:
        A complete, self-contained HTML document.
    """
    name = _e(report["experiment"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Experiment report: {name}</title>
<style>{_CSS}</style>
</head>
<body>
{render_report_body(report, charts)}</body>
</html>
"""

