"""Metrics and request logs for the web process: ``/metrics`` (Prometheus) and one JSON line
per request with a request id.

Request ids: an ``X-Request-Id`` header of 1-128 characters from ``[A-Za-z0-9._:-]`` is kept
(a load balancer's id follows the request through), anything else is replaced by a fresh
uuid4; the id is echoed in the ``X-Request-Id`` response header, in every problem+json body
(``request_id``) and in the log line. The log line carries the method, the route pattern and
the path but never the query string, headers or body, so no token, key or install id is
written.

Metrics are counted in the process that saw the event (requests, manifest decisions,
telemetry events). Under gunicorn each worker is a process, so prometheus-client runs in
multiprocess mode: ``deploy/gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` and marks
dead workers; a scrape sums the files of every worker. What other machines do (jobs on the
Celery workers, guardrail halts by the beat's maintenance) is read from the database at
scrape time, so every web process reports the same, complete figures for it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["init_app", "metrics_response", "record_manifest", "record_telemetry", "request_id"]

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_quote = json.encoder.encode_basestring_ascii  # a JSON string literal, as json.dumps writes it
log = logging.getLogger("modeldrop.request")

REQUESTS = Counter("modeldrop_http_requests_total", "HTTP requests by route, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("modeldrop_http_request_duration_seconds", "HTTP request latency by route",
                    ["route", "method"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
MANIFESTS = Counter("modeldrop_manifest_decisions_total",
                    "Manifest answers by model, channel, experiment arm and decision "
                    "(offer, not_modified, nothing)", ["model", "channel", "arm", "decision"])
TELEMETRY = Counter("modeldrop_telemetry_events_total",
                    "Telemetry events by outcome (accepted, duplicate, rejected)", ["outcome"])


def _new_id() -> str:
    """32 hex digits. A correlation id, not a secret: the process's Mersenne Twister (seeded
    from os.urandom, and again in every forked worker) instead of a urandom syscall per
    request."""
    return f"{random.getrandbits(128):032x}"


def request_id() -> str | None:
    """The current request's id (None outside a request)."""
    try:
        return g.get("request_id")
    except RuntimeError:
        return None


def init_app(app: Flask) -> None:
    """Request ids, the JSON request log and the request metrics for ``app``."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

    # The manifest path is the hot one (~0.2 ms of CPU): label children are looked up once,
    # and the log record is made without logging's caller lookup (findCaller).
    children: dict[tuple, tuple] = {}

    @app.before_request
    def _start() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if REQUEST_ID_RE.match(given) else _new_id()
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(resp: Response) -> Response:
        rid = g.get("request_id") or _new_id()
        resp.headers["X-Request-Id"] = rid
        started = g.get("request_started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        # The route pattern, never the path, as the label: a label per URL would be unbounded.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        key = (route, request.method, resp.status_code)
        pair = children.get(key)
        if pair is None:
            pair = children[key] = (REQUESTS.labels(route, request.method, str(resp.status_code)),
                                    LATENCY.labels(route, request.method))
        pair[0].inc()
        pair[1].observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            # the same line json.dumps of the dict wrote (key order, escapes, number forms),
            # without building the dict: the request id is [A-Za-z0-9._:-] or hex, the rest
            # goes through json's own C string encoder
            size = resp.content_length
            addr = request.remote_addr
            line = (f'{{"ts":{round(time.time(), 3)!r},"request_id":"{rid}",'
                    f'"method":{_quote(request.method)},"route":{_quote(route)},'
                    f'"path":{_quote(request.path)},"status":{resp.status_code},'
                    f'"duration_ms":{round(elapsed * 1000, 2)!r},'
                    f'"bytes":{"null" if size is None else int(size)},'
                    f'"remote_addr":{"null" if addr is None else _quote(addr)}}}')
            log.handle(log.makeRecord(log.name, logging.INFO, __name__, 0, line, None, None))
        return resp


def record_manifest(status: int, document: dict[str, Any] | None, args: Any) -> None:
    """Count one manifest answer. Labels come from the signed document for an offer (real
    models and channels only); a 204 is counted without its channel, which a client could
    otherwise vary without end."""
    if status == 200 and document:
        labels = (str(document.get("model", "")), str(document.get("channel", "")),
                  str(document.get("arm") or ""), "offer")
    elif status == 304:
        labels = (args.get("model", ""), args.get("channel", "production"), "", "not_modified")
    else:
        labels = (args.get("model", ""), "", "", "nothing")
    child = _manifest_children.get(labels)
    if child is None:  # labels() validates and locks on every call: looked up once
        if len(_manifest_children) >= 4096:  # 304/204 labels carry the client's model name
            _manifest_children.clear()
        child = _manifest_children[labels] = MANIFESTS.labels(*labels)
    child.inc()


_manifest_children: dict[tuple[str, str, str, str], Any] = {}


def record_telemetry(result: Any) -> None:
    """Count a telemetry batch's outcome (``record_batch``'s answer)."""
    get = result.get if isinstance(result, dict) else lambda k, d=None: getattr(result, k, d)
    rejected = get("rejected", []) or []
    for outcome, n in (("accepted", get("accepted", 0)), ("duplicate", get("duplicates", 0)),
                       ("rejected", len(rejected) if isinstance(rejected, list) else int(rejected))):
        if n:
            TELEMETRY.labels(outcome).inc(n)


# The toolchain that converts a source format (registry/upload_stream.py SOURCE_EXTENSIONS);
# any other source (artifacts uploaded ready-made) is "provided".
TOOLCHAINS = {"keras": "tensorflow", "h5": "tensorflow", "zip": "tensorflow", "pt2": "torch", "pt": "torch"}


def toolchain(source_format: str | None) -> str:
    return TOOLCHAINS.get(source_format or "", "provided")


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


class _DatabaseCollector:
    """Figures that live in the database: queue depth, oldest queued job, jobs by kind and
    state with their run time, the same by toolchain (durations and failures), guardrail
    halts."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self):
        stats = self.services.store.job_metrics()
        depth = GaugeMetricFamily("modeldrop_job_queue_depth", "Jobs waiting for a worker", labels=["kind"])
        oldest = GaugeMetricFamily("modeldrop_job_oldest_queued_seconds", "Age of the oldest queued job")
        jobs = GaugeMetricFamily("modeldrop_jobs", "Jobs by kind and state", labels=["kind", "state"])
        seconds = GaugeMetricFamily("modeldrop_job_recent_run_seconds",
                                    "Mean run time of the last 1000 finished jobs by kind and state",
                                    labels=["kind", "state"])
        halts = GaugeMetricFamily("modeldrop_guardrail_halts", "Releases and experiments halted by a guardrail",
                                  labels=["what"])
        for (kind, state), count in sorted(stats["jobs"].items()):
            jobs.add_metric([kind, state], count)
            if state == "queued":
                depth.add_metric([kind], count)
        for (kind, state), mean in sorted(stats["recent_run_seconds"].items()):
            seconds.add_metric([kind, state], mean)
        oldest.add_metric([], stats["oldest_queued_seconds"] or 0.0)
        for what, n in sorted(stats["halts"].items()):
            halts.add_metric([what], n)
        by_toolchain = GaugeMetricFamily(
            "modeldrop_jobs_by_toolchain", "Jobs by kind (convert, deltas), toolchain of the version's "
            "source (tensorflow, torch, provided) and state", labels=["kind", "toolchain", "state"])
        failures = GaugeMetricFamily("modeldrop_job_failures", "Failed jobs by kind and toolchain",
                                     labels=["kind", "toolchain"])
        counted: dict[tuple[str, str, str], int] = {}
        for (kind, fmt, state), n in stats["jobs_by_source"].items():
            key = (kind, toolchain(fmt), state)
            counted[key] = counted.get(key, 0) + n
        failed: dict[tuple[str, str], int] = {}
        for (kind, chain, state), n in sorted(counted.items()):
            by_toolchain.add_metric([kind, chain, state], n)
            if state == "failed":
                failed[(kind, chain)] = failed.get((kind, chain), 0) + n
        for (kind, chain), n in sorted(failed.items()):
            failures.add_metric([kind, chain], n)
        duration = GaugeMetricFamily(
            "modeldrop_job_duration_seconds", "Run time (claim to finish) of the last 1000 finished jobs "
            "by kind, toolchain and final state: quantiles 0.5, 0.95 and 1 (the longest)",
            labels=["kind", "toolchain", "state", "quantile"])
        finished = GaugeMetricFamily("modeldrop_job_duration_jobs",
                                     "How many of the last 1000 finished jobs modeldrop_job_duration_seconds "
                                     "summarises", labels=["kind", "toolchain", "state"])
        merged: dict[tuple[str, str, str], list[float]] = {}
        for (kind, fmt, state), values in stats["recent_durations_by_source"].items():
            merged.setdefault((kind, toolchain(fmt), state), []).extend(values)
        for (kind, chain, state), values in sorted(merged.items()):
            values.sort()
            for q in (0.5, 0.95, 1.0):
                duration.add_metric([kind, chain, state, str(q)], _quantile(values, q))
            finished.add_metric([kind, chain, state], len(values))
        yield from (depth, oldest, jobs, seconds, halts, by_toolchain, failures, duration, finished)


def metrics_response(services: Any) -> Response:
    """The Prometheus exposition of this process (or of every gunicorn worker, multiprocess
    mode) plus the database figures."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return Response(generate_latest(_Both(registry, _DatabaseCollector(services))),
                    content_type=CONTENT_TYPE_LATEST)


class _Both:
    """A registry and the database collector, without registering the latter globally (an
    app per test would register one each)."""

    def __init__(self, registry: Any, extra: Any) -> None:
        self.registry, self.extra = registry, extra

    def collect(self):
        yield from self.registry.collect()
        yield from self.extra.collect()
