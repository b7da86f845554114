"""Runs one conversion job: source blob -> variants -> blobs -> TUF targets -> variant rows.

Publishing order keeps every reader consistent: a variant's file is stored first, then it is
added to the signed TUF targets, and only then recorded (and so visible to the API and to
manifests). A crash anywhere before the row is written leaves nothing half-published.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from registry.jobs.publish import publish_variants

log = logging.getLogger("modeldrop.jobs")
HEARTBEAT_SECONDS = 10.0


def run_job(services, job_id: str) -> str:  # noqa: ANN001 - registry.app.Services
    """Run a claimed job to its end; returns the final job state."""
    store = services.store
    job = store.get_job(job_id)
    version = store.get_version(job.model, job.version)
    version_id = store.version_id(job.model, job.version)
    store.set_version_status(version_id, "converting")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beat.start()
    try:
        with tempfile.TemporaryDirectory(prefix=f"job-{job_id[:8]}-", dir=services.work_dir) as tmp:
            results = _convert(services, job_id, version, version_id, Path(tmp))
            if isinstance(results, str):  # the source failed to load or convert
                store.finish_job(job_id, "failed", {}, results)
                store.set_version_status(version_id, "failed", results)
                return "failed"
            summary = publish_variants(services, job.model, job.version, version_id, results)
    except Exception as e:  # noqa: BLE001 - a job failure is data, not a crash of the worker
        log.exception("job %s failed", job_id)
        message = f"{type(e).__name__}: {e}"
        store.finish_job(job_id, "failed", {}, message)
        store.set_version_status(version_id, "failed", message)
        return "failed"
    finally:
        stop.set()
    failed = {k: v for k, v in summary.items() if v["state"] == "failed"}
    if len(failed) == len(summary):
        error = "every variant failed: " + "; ".join(f"{k}: {v['error']}" for k, v in failed.items())
        store.finish_job(job_id, "failed", summary, error)
        store.set_version_status(version_id, "failed", error)
        return "failed"
    note = ("; ".join(f"{k}: {v['error']}" for k, v in failed.items())) or None
    store.finish_job(job_id, "done", summary, None)
    store.set_version_status(version_id, "ready", f"some variants failed: {note}" if note else None)
    return "done"


def _heartbeat(store, job_id: str, stop: threading.Event) -> None:  # noqa: ANN001
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            store.heartbeat(job_id)
        except Exception:  # noqa: BLE001
            log.exception("heartbeat failed")


def _convert(services, job_id: str, version, version_id: int, workdir: Path) -> list | str:  # noqa: ANN001
    """Returns the converter's results, or the error message when the source cannot be used."""
    from registry.convert import ConversionError, convert_version

    settings = services.settings
    source = workdir / f"source.{version.source['format']}"
    services.blobs.copy_to(version.source["sha256"], source)
    eval_path = None
    if version.source.get("eval_sha256"):
        eval_path = workdir / "eval.npz"
        services.blobs.copy_to(version.source["eval_sha256"], eval_path)
    # The upload's own threshold wins, then the model's, then the server default.
    threshold = services.store.model_threshold(version_id)
    if threshold is None:
        threshold = settings.accuracy_drop_threshold_pp

    def progress(done: int, total: int, name: str) -> None:
        services.store.job_progress(job_id, done, total, f"variant {done} of {total}: {name}")

    variants = version.metadata.get("variants")
    from registry.convert.catalog import validate_variants

    services.store.job_progress(job_id, 0, len(validate_variants(variants)), "loading the model")
    try:
        return convert_version(source, workdir / "out", variants=variants, eval_path=eval_path,
                               accuracy_drop_threshold_pp=float(threshold),
                               latency_runs=settings.latency_runs, progress=progress,
                               max_parallel=settings.convert_max_parallel or None)
    except ConversionError as e:
        return str(e)
