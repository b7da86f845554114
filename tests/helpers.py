"""Plain helpers the tests import: settings for an isolated data dir, a token-carrying test
client, and the problem+json assertion. Fixtures live in conftest.py and the modules it
names in ``pytest_plugins``."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ApiClient", "assert_problem", "base_settings", "converting_app", "wait_job"]


def base_settings(tmp_path: Path, **overrides):
    from registry.config import Settings

    # "required": a test never runs an upload (or a hostile payload) outside the sandbox;
    # where bubblewrap cannot run, conversions fail loudly instead of running degraded.
    values = {"data_dir": tmp_path / "data", "testing": True, "latency_runs": 5, "convert_sandbox": "required"}
    values.update(overrides)
    return Settings.load(values, environ={})


class ApiClient:
    """Flask test client with a bearer token and JSON helpers."""

    def __init__(self, flask_client, token: str | None) -> None:
        self.c = flask_client
        self.token = token

    def _headers(self, headers=None):
        h = dict(headers or {})
        if self.token:
            h.setdefault("Authorization", f"Bearer {self.token}")
        return h

    def get(self, url, **kw):
        return self.c.get(url, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, url, **kw):
        return self.c.post(url, headers=self._headers(kw.pop("headers", None)), **kw)

    def patch(self, url, **kw):
        return self.c.patch(url, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, url, **kw):
        return self.c.delete(url, headers=self._headers(kw.pop("headers", None)), **kw)

    def upload(self, name, content: bytes = b"model-bytes", filename="model.keras", metadata=None,
               eval_bytes: bytes | None = None, version: int | None = None):
        data = {"file": (io.BytesIO(content), filename)}
        if metadata is not None:
            data["metadata"] = metadata if isinstance(metadata, str) else json.dumps(metadata)
        if eval_bytes is not None:
            data["eval"] = (io.BytesIO(eval_bytes), "eval.npz")
        if version is not None:
            data["version"] = str(version)
        return self.post(f"/v1/models/{name}/versions", data=data,
                         content_type="multipart/form-data")


def assert_problem(resp, status: int, code: str):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert "Traceback" not in json.dumps(body)
    return body


def npz_bytes(seed: int = 0, samples: int = 4, features: int = 8) -> bytes:
    """A small, valid eval set (``x`` float32 (samples, features), ``y`` int64), distinct per
    seed: the upload checks the eval set's structure, so garbage bytes are refused."""
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((samples, features), dtype=np.float32),
             y=rng.integers(0, 3, samples))
    return buf.getvalue()


def wait_job(fetch: Callable[[str], dict], job_id: str, timeout: float = 300, step: float = 0.5) -> dict:
    """Poll ``fetch(job_id)`` (a job as GET /v1/jobs/{id} returns it) until it is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = fetch(job_id)
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(step)
    raise AssertionError(f"job {job_id} did not finish")


@contextmanager
def converting_app(tmp_path: Path, role: str = "publisher") -> Iterator[tuple]:
    """An app on ``tmp_path`` whose in-process worker converts in the sandbox (one process,
    300 s per job), with a token of ``role``: yields ``(app, services, token)`` and stops the
    worker and the database afterwards."""
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, worker_processes=1, convert_timeout=300),
                     start_workers=True)
    services = app.extensions["modeldrop"]
    token = services.store.create_token(role, "tests").token
    try:
        yield app, services, token
    finally:
        services.jobs.stop()
        services.store.engine.dispose()
