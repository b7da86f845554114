"""Runs one conversion job: source blob -> variants -> blobs -> TUF targets -> variant rows.

Publishing order keeps every reader consistent: a variant's file is stored first, then it is
added to the signed TUF targets, and only then recorded (and so visible to the API and to
manifests). A crash anywhere before the row is written leaves nothing half-published.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from registry.jobs.publish import publish_variants
from registry.jobs.results import MAX_JOB_TEXT, scrub

if TYPE_CHECKING:  # registry.services imports this package: a type only, no import cycle
    from registry.services import Services

log = logging.getLogger("modeldrop.jobs")
HEARTBEAT_SECONDS = 10.0


def run_job(services: Services, job_id: str) -> str:
    """Run a claimed job to its end; returns the final job state."""
    store = services.store
    job = store.get_job(job_id)
    if job.kind == "deltas":  # delta patches for a released version (registry.delivery.deltas)
        from registry.delivery.deltas import run_delta_job

        return run_delta_job(services, job)
    version = store.get_version(job.model, job.version)
    version_id = store.version_id(job.model, job.version)
    store.set_version_status(version_id, "converting")
    stop = threading.Event()
    # Several beats within MODELDROP_JOB_STALE_AFTER, so a live job is never taken for dead.
    interval = min(HEARTBEAT_SECONDS, services.settings.job_stale_after / 4)
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop, interval), daemon=True)
    beat.start()
    try:
        with tempfile.TemporaryDirectory(prefix=f"job-{job_id[:8]}-", dir=services.work_dir) as tmp:
            results = _convert(services, job_id, version, version_id, Path(tmp))
            if isinstance(results, str):  # the source failed to load or convert
                return _finish(store, job_id, version_id, "failed", {}, results)
            summary = publish_variants(services, job.model, job.version, version_id, results)
    except Exception as e:
        log.exception("job %s failed", job_id)
        message = scrub(f"{type(e).__name__}: {e}")
        return _finish(store, job_id, version_id, "failed", {}, message)
    finally:
        stop.set()
    failed = {k: v for k, v in summary.items() if v["state"] == "failed"}
    if len(failed) == len(summary):
        error = scrub("every variant failed: " + "; ".join(f"{k}: {v['error']}" for k, v in failed.items()),
                      limit=MAX_JOB_TEXT)
        return _finish(store, job_id, version_id, "failed", summary, error)
    note = scrub("; ".join(f"{k}: {v['error']}" for k, v in failed.items()), limit=MAX_JOB_TEXT) or None
    return _finish(store, job_id, version_id, "done", summary, None,
                   version_note=f"some variants failed: {note}" if note else None)


def _finish(store, job_id: str, version_id: int, state: str, summary: dict, error: str | None, *,
            version_note: str | None = None) -> str:
    """End a conversion job: the version's status first, then the job's state, so a client
    that saw the job end ("done" or "failed") reads the version's final status, never
    "converting". Returns the job's state."""
    store.set_version_status(version_id, "ready" if state == "done" else "failed",
                             version_note if state == "done" else error)
    store.finish_job(job_id, state, summary, error)
    return state


def _heartbeat(store, job_id: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        try:
            store.heartbeat(job_id)
        except Exception:
            log.exception("heartbeat failed")


def _convert(services, job_id: str, version, version_id: int, root: Path) -> list | str:
    """Run the untrusted converter in the sandbox and return the variants it built, re-hashed
    and validated, or the (scrubbed) reason the source cannot be used."""
    from registry.convert.catalog import PROVIDED_VARIANT, ConversionError, validate_variants
    from registry.jobs.conversion import SandboxedConversion

    conversion = SandboxedConversion(services.settings, root)
    source_name = f"source.{version.source['format']}"
    services.blobs.copy_to(version.source["sha256"], conversion.input_dir / source_name)
    eval_name = None
    if version.source.get("eval_sha256"):
        eval_name = "eval.npz"
        services.blobs.copy_to(version.source["eval_sha256"], conversion.input_dir / eval_name)
    # The engineer's own artifacts attached to this source: staged beside it under the
    # suffix their format has in the converter's input folder (as a provided upload).
    attached, attached_sha = [], {}
    for a in version.source.get("attachments") or []:
        file_name = f"attached-{a['variant']}.{a['format']}"
        services.blobs.copy_to(a["sha256"], conversion.input_dir / file_name)
        attached.append((a["variant"], file_name))
        attached_sha[a["variant"]] = a["sha256"]
    # The upload's own threshold wins, then the model's, then the server default.
    threshold = services.store.model_threshold(version_id)
    fmt = version.source["format"]
    if fmt in PROVIDED_VARIANT:  # an engineer's own artifact: one variant, its own bytes
        variants = [PROVIDED_VARIANT[fmt]]
    else:
        variants = validate_variants(version.metadata.get("variants"))
    services.store.job_progress(job_id, 0, len(variants) + len(attached), "loading the model")

    def progress(done: int, total: int, name: str) -> None:
        services.store.job_progress(job_id, done, total, f"variant {done} of {total}: {name}")

    declared = {"input": version.metadata.get("input") or [], "output": version.metadata.get("output") or []}
    try:
        results = conversion.run(source_name, eval_name=eval_name, variants=variants, threshold_pp=threshold,
                                 progress=progress, declared=declared,
                                 max_relative_rmse=max_relative_rmse(services, version, version_id),
                                 attached=attached)
    except ConversionError as e:
        return str(e)
    if fmt in PROVIDED_VARIANT:
        return _provided_is_the_upload(results, version.source["sha256"])
    return _attached_are_the_uploads(results, attached_sha)


def _not_the_uploaded_bytes(results: list, expected: dict[str, str]) -> list:
    """The results named in ``expected`` (variant -> sha256 of the uploaded file) whose
    artifact has other bytes: a variant served as uploaded must be the upload, whatever the
    sandbox reports (compared here, outside the sandbox)."""
    import hmac

    return [r for r in results if r.name in expected and r.error is None
            and not hmac.compare_digest(str(r.sha256), expected[r.name])]


def _provided_is_the_upload(results: list, source_sha256: str) -> list | str:
    """A provided version's one variant is the upload: other bytes fail the job."""
    if _not_the_uploaded_bytes(results, {r.name: source_sha256 for r in results}):
        return "invalid_artifact: the converter returned other bytes than the uploaded artifact"
    return results


def _attached_are_the_uploads(results: list, attached_sha: dict[str, str]) -> list:
    """An attached variant with other bytes than its attachment fails on its own; the
    converted variants still publish."""
    for r in _not_the_uploaded_bytes(results, attached_sha):
        message = "invalid_artifact: the converter returned other bytes than the attached artifact"
        r.path, r.sha256, r.size, r.servable, r.reason, r.error = None, None, None, False, message, message
    return results


def max_relative_rmse(services, version, version_id: int | None = None) -> float:
    """The regression outputs' bound for a version: its upload's ``max_relative_rmse``,
    else its model's (``PATCH /v1/models/{name}``), else the server's setting
    (MODELDROP_MAX_RELATIVE_RMSE) — the same precedence as the accuracy-drop threshold."""
    value = (version.metadata or {}).get("max_relative_rmse")
    if value is not None:
        return float(value)
    if version_id is not None:
        model_value = services.store.model_max_relative_rmse(version_id)
        if model_value is not None:
            return float(model_value)
    return float(services.settings.max_relative_rmse)


def sweep_abandoned_work(services) -> list[Path]:
    """Remove the conversion folders (``work/job-<first 8 of the id>-*``) a killed job left,
    except those of jobs a live worker runs: another worker on the same data dir may own one,
    and a job is live while it heart-beats within ``MODELDROP_JOB_STALE_AFTER``. The folders
    are listed before the jobs are read, so a job claimed meanwhile already counts as live."""
    from registry.jobs.worker import stale_after

    folders = sorted(Path(services.work_dir).glob("job-*"))
    if not folders:
        return []
    live = {job_id[:8] for job_id in services.store.live_job_ids(stale_after(services.settings))}
    removed = []
    for folder in folders:
        if folder.name[4:12] in live:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
