"""Budgets and rate limits: how much one token, client IP or install id may ask of the server.

Two mechanisms share one counter storage (``settings.rate_limit_storage_url``: in memory for
the embedded default, Redis in the scale mode so every web process counts together):

* **Telemetry budgets** count *events*, not requests: a batch of 1,000 events costs 1,000.
  Per client IP the whole batch is refused (429, ``Retry-After``) once the IP is over its
  budget; per install id only that device's events are dropped (rejected by index, like any
  other bad event), so one noisy device cannot cost its neighbours behind the same NAT.
* **Request rate limits** (flask-limiter) on every write route (any method but GET, HEAD and
  OPTIONS, so a route added later is limited without a decision), per token and per client
  IP, checked before the view runs and before the body is read; a breach is a 429
  problem+json with ``Retry-After``. Telemetry is the one write route left to its event
  budgets: a fleet behind one NAT sends many small batches.

A budget is a fence against floods, not the defence against forged telemetry: guardrails
count only devices the server served (registry/store/_served.py), whatever gets through.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limit, Limiter, RequestLimit
from limits import RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from registry.config import Settings
from registry.errors import RateLimitedError

__all__ = ["TelemetryBudget", "init_app", "telemetry_budget"]

EXTENSION = "modeldrop.ratelimit"
LIMITER = "modeldrop.limiter"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXEMPT_ENDPOINTS = frozenset({"telemetry.ingest"})  # limited by its event budgets instead


class TelemetryBudget:
    """Events per install id per hour and per client IP per minute (0 disables either)."""

    def __init__(self, settings: Settings) -> None:
        self._limiter = FixedWindowRateLimiter(storage_from_string(settings.rate_limit_storage_url))
        self._per_install = (RateLimitItemPerHour(settings.telemetry_events_per_install)
                             if settings.telemetry_events_per_install > 0 else None)
        self._per_ip = (RateLimitItemPerMinute(settings.telemetry_events_per_ip)
                        if settings.telemetry_events_per_ip > 0 else None)

    def charge_ip(self, client_ip: str, events: int) -> None:
        """Count ``events`` against the IP's budget.

        Raises:
            RateLimitedError: the IP is over budget; nothing of the batch is stored.
        """
        if self._per_ip is None or events <= 0:
            return
        if not self._limiter.hit(self._per_ip, "telemetry-ip", client_ip, cost=events):
            reset = self._limiter.get_window_stats(self._per_ip, "telemetry-ip", client_ip).reset_time
            raise RateLimitedError(
                f"this client sent more than {self._per_ip.amount} telemetry events in a "
                "minute; send the batch again later", retry_after=math.ceil(reset - time.time()),
                limit=self._per_ip.amount, scope="client_ip")

    def over_budget(self, install_ids: list[str]) -> set[str]:
        """Charge each install id for its events in this batch; returns those now over budget
        (their events are dropped, the rest of the batch is stored)."""
        if self._per_install is None:
            return set()
        return {install_id for install_id, n in Counter(install_ids).items()
                if not self._limiter.hit(self._per_install, "telemetry-install", install_id,
                                         cost=n)}

    @property
    def per_install(self) -> int:
        return self._per_install.amount if self._per_install is not None else 0


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _token_key() -> str:
    """The bearer token's hash (never the token: the key may sit in Redis), whatever its
    scheme's case; revoked and made-up tokens are counted too, before auth looks at them."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return hashlib.sha256(token.strip().encode()).hexdigest()[:32] if scheme.lower() == "bearer" else ""


def _not_limited() -> bool:
    return request.method in READ_METHODS or request.endpoint in EXEMPT_ENDPOINTS


def _breach(scope: str):
    def on_breach(limit: RequestLimit) -> Response:
        from registry.api import problem_response

        amount, per = limit.limit.amount, limit.limit.get_expiry()
        return problem_response(RateLimitedError(
            f"more than {amount} write requests in {per} seconds from this "
            f"{'token' if scope == 'token' else 'client IP'}; retry after the Retry-After delay",
            retry_after=math.ceil(limit.window.reset_time - time.time()), limit=amount, scope=scope))

    return on_breach


def _write_limiter(settings: Settings) -> Limiter:
    limits = []
    if settings.write_requests_per_ip > 0:
        limits.append(Limit(f"{settings.write_requests_per_ip}/minute", key_function=client_ip,
                            scope="write-ip", shared=True, exempt_when=_not_limited,
                            on_breach=_breach("client_ip")))
    if settings.write_requests_per_token > 0:
        limits.append(Limit(f"{settings.write_requests_per_token}/minute", key_function=_token_key,
                            scope="write-token", shared=True,
                            exempt_when=lambda: _not_limited() or not _token_key(),
                            on_breach=_breach("token")))
    return Limiter(client_ip, default_limits=limits, storage_uri=settings.rate_limit_storage_url,
                   strategy="fixed-window", headers_enabled=False, key_prefix="modeldrop")


def init_app(app: Flask, settings: Settings) -> None:
    """Attach the budgets and the write-route limiter to the app."""
    app.extensions[EXTENSION] = TelemetryBudget(settings)
    limiter = _write_limiter(settings)
    # Every limit is exempt for reads anyway; saying so up front skips the limiter's
    # per-request resolution of its limits on the manifest path (a third of a millisecond).
    limiter.request_filter(_not_limited)
    limiter.init_app(app)
    # ... and a read never enters it: even with that filter, its hook resolved the endpoint
    # and its filters on every GET (~0.06-0.1 ms of a manifest's CPU, docs/benchmarks.md)
    hooks = app.before_request_funcs.setdefault(None, [])
    check = limiter._check_request_limit
    for n, hook in enumerate(hooks):
        if hook == check:
            def _writes_only(check=check) -> None:
                if request.method not in READ_METHODS:
                    check()

            hooks[n] = _writes_only
    app.extensions[LIMITER] = limiter


def telemetry_budget(app: Any = None) -> TelemetryBudget:
    return (app or current_app).extensions[EXTENSION]
