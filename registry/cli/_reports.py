"""`modeldrop experiment report NAME`: the experiment report as tables (or JSON, or HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from registry.cli._common import client, echo_json, pass_ctx, table

__all__ = ["register", "report_cmd"]


def register(main: click.Group) -> None:
    """Attach ``report`` to the delivery commands' ``experiment`` group."""
    from registry.cli._delivery import experiment

    experiment.add_command(report_cmd)


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _value(m: dict[str, Any], x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f} ms" if m["unit"] == "ms" else _pct(x)


def _ci(lo_hi: list[float] | None, fmt) -> str:
    return "" if not lo_hi else f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _effect(m: dict[str, Any]) -> str:
    if m["ci95_of"] == "ratio":
        ratio = m.get("ratio")
        if ratio is None:
            return "-"
        return f"x{ratio:.3f} " + _ci(m["ci95"], lambda v: f"x{v:.3f}")
    if m["diff"] is None:
        return "-"
    if m["unit"] == "ms":
        return f"{m['diff']:+.2f} ms " + _ci(m["ci95"], lambda v: f"{v:+.2f}")
    return f"{100 * m['diff']:+.2f}pp " + _ci(m["ci95"], lambda v: f"{100 * v:+.2f}")


def _lift(m: dict[str, Any]) -> str:
    if m["lift"] is None:
        return "-"
    return f"{100 * m['lift']:+.1f}% " + _ci(m["lift_ci95"], lambda v: f"{100 * v:+.1f}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_text(report: dict[str, Any]) -> str:
    """The report as plain-text tables, in the order of the HTML page."""
    out = []
    source = report.get("source") or {}
    out.append(f"Experiment {report['experiment']}: {report['units']} units, control arm "
               f"{report['control']!r}; {100 * report['confidence_level']:.0f}% intervals"
               + (f"; generated {source['generated_at']}" if source.get("generated_at") else ""))
    srm = report["srm"]
    if srm["p_value"] is None:
        out.append("Sample ratio: not tested (too few units)")
    else:
        out.append(f"Sample ratio: p = {_p(srm['p_value'])} "
                   + ("MISMATCH - metrics are not trustworthy until the cause is found"
                      if srm["alert"] else "(ok)"))
    for h in report["health"]:
        where = "".join(f" [{k}={h[k]}]" for k in ("arm", "metric") if h.get(k))
        out.append(f"  {h['level'].upper():8} {h['code']}{where}: {h['message']}")
    out.append("")
    out.append(table(
        ["ARM", "WEIGHT", "ASSIGNED", "DOWNLOADED", "INSTALLED", "ACTIVE", "DL FAILED",
         "LOAD FAILED", "CRASHED"],
        [(name, a["weight"], a["assigned"], a["downloaded"], a["installed"], a["active"],
          a["download_failed"], a["install_failed"], a["crashed"])
         for name, a in report["arms"].items()]))
    out.append("")
    out.append(table(
        ["METRIC", "ARM", "VALUE", "CONTROL", "DIFFERENCE [95% CI]", "LIFT [95% CI]", "P",
         "P (HOLM)", "VERDICT"],
        [(m["metric"] + (" (guardrail)" if m["guardrail"] else ""), m["arm"],
          _value(m, m["value"]), _value(m, m["control_value"]), _effect(m), _lift(m),
          _p(m["p_value"]), _p(m["p_value_adjusted"]), m["verdict"] or "-")
         for m in report["metrics"]]))
    out.append("")
    out.append(table(
        ["ARM", "DEVICES", "SAMPLES", "p50 ms [95% CI]", "p90 ms [95% CI]", "p50 RATIO",
         "p90 RATIO"],
        [(name, lat["devices"], lat["samples"],
          f"{_ms(lat['p50'])} {_ci(lat['p50_ci95'], _ms)}".strip(),
          f"{_ms(lat['p90'])} {_ci(lat['p90_ci95'], _ms)}".strip(),
          _ms(lat.get("p50_ratio")), _ms(lat.get("p90_ratio")))
         for name, lat in report["latency"].items()]))
    return "\n".join(out)


@click.command("report")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the report JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also save the HTML page with charts to this file.")
@pass_ctx
def report_cmd(ctx: click.Context, name: str, as_json: bool, html_path: Path | None) -> None:
    """Show the A/B report of experiment NAME: funnel, sample ratio, metrics, latency."""
    api = client(ctx)
    report = api.get(f"/v1/experiments/{name}/report")
    if html_path is not None:
        resp = api.session.get(f"{api.base_url}/v1/experiments/{name}/report.html",
                               timeout=api.timeout)
        if resp.status_code != 200:
            raise click.ClickException(f"could not fetch the HTML report (HTTP {resp.status_code})")
        html_path.write_text(resp.text, encoding="utf-8")
    if as_json:
        echo_json(report)
        return
    click.echo(render_text(report))
    if html_path is not None:
        click.echo(f"\nHTML report written to {html_path}")
