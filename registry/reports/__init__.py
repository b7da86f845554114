"""A/B experiment reports: statistics, charts and the HTML page, on per-unit aggregates.

This package never touches the database or Flask: the integrator reduces telemetry to one
`UnitSummary` per assigned install id and calls `build_report`; the result is plain JSON data
from which `render_charts` and `render_report_html` draw. docs/reports.md explains every number.
"""

from registry.reports._inputs import ExperimentDef, UnitSummary
from registry.reports._page import REPORT_CSS, render_report_body, render_report_html
from registry.reports._report import (
    GUARDRAIL_INPUT_NAMES,
    METRICS,
    MetricInfo,
    build_report,
    guardrail_metrics_for,
)
from registry.reports.charts import render_charts

__all__ = [
    "GUARDRAIL_INPUT_NAMES",
    "REPORT_CSS",
    "METRICS",
    "ExperimentDef",
    "MetricInfo",
    "UnitSummary",
    "build_report",
    "guardrail_metrics_for",
    "render_charts",
    "render_report_body",
    "render_report_html",
]
