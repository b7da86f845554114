"""A/B experiment reports: statistics, charts and the HTML page, on per-unit aggregates.

This package never touches the database or Flask: the integrator reduces telemetry to one
`UnitSummary` per assigned install id and calls `build_report`; the result is plain JSON data
from which `render_charts` and `render_report_html` draw. docs/reports.md explains every number.
"""

from registry.reports._inputs import ExperimentDef, UnitSummary

# The rest needs numpy and scipy (statistics) and matplotlib (charts): tens of MB that a web
# process serving manifests never uses, so each name is imported when first used (PEP 562).
_LAZY = {"REPORT_CSS": "_page", "render_report_body": "_page", "render_report_html": "_page",
         "GUARDRAIL_INPUT_NAMES": "_report", "METRICS": "_report", "MetricInfo": "_report",
         "build_report": "_report", "guardrail_metrics_for": "_report", "render_charts": "charts"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"registry.reports.{module}"), name)
    globals()[name] = value
    return value


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
