"""Runs one conversion job: source blob -> variants -> blobs -> TUF targets -> variant rows.

Publishing order keeps every reader consistent: a variant's file is stored first, then it is
added to the signed TUF targets, and only then recorded (and so visible to the API and to
manifests). A crash anywhere before the row is written leaves nothing half-published.
"""

from __future__ import annotations

import json
import logging
import os
import signal
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
        from registry.jobs.results import scrub

        log.exception("job %s failed", job_id)
        message = scrub(f"{type(e).__name__}: {e}")
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


def _convert(services, job_id: str, version, version_id: int, root: Path) -> list | str:  # noqa: ANN001
    """Run the untrusted converter in the sandbox and return the variants it built, re-hashed
    and validated, or the (scrubbed) reason the source cannot be used."""
    from registry.convert.catalog import validate_variants
    from registry.convert.confined import REQUEST_NAME
    from registry.jobs import results as checks
    from registry.jobs.sandbox import JobDirs, Sandbox, SandboxUnavailableError

    settings = services.settings
    sandbox = Sandbox(settings)
    dirs = JobDirs(root)
    sandbox.prepare(dirs)
    source_name = f"source.{version.source['format']}"
    services.blobs.copy_to(version.source["sha256"], dirs.input / source_name)
    upload_bytes = (dirs.input / source_name).stat().st_size
    eval_name = None
    if version.source.get("eval_sha256"):
        eval_name = "eval.npz"
        services.blobs.copy_to(version.source["eval_sha256"], dirs.input / eval_name)
        upload_bytes += (dirs.input / eval_name).stat().st_size
    # The upload's own threshold wins, then the model's, then the server default.
    threshold = services.store.model_threshold(version_id)
    if threshold is None:
        threshold = settings.accuracy_drop_threshold_pp
    variants = validate_variants(version.metadata.get("variants"))
    budget = int(settings.convert_work_factor * upload_bytes) + (64 << 20)
    request = {"source": source_name, "eval": eval_name, "variants": variants,
               "threshold_pp": float(threshold), "latency_runs": settings.latency_runs,
               "max_parallel": settings.convert_max_parallel or None,
               "max_extract_bytes": budget, "check_ops": settings.convert_op_check}
    (dirs.input / REQUEST_NAME).write_text(json.dumps(request))
    for p in dirs.input.iterdir():
        os.chmod(p, 0o644)

    total = len(variants)
    services.store.job_progress(job_id, 0, total, "loading the model")

    def on_message(message: dict) -> None:
        done, name = message.get("done"), message.get("variant")
        if isinstance(done, int) and not isinstance(done, bool) and 0 <= done <= total and name in variants:
            services.store.job_progress(job_id, done, total, f"variant {done} of {total}: {name}")

    try:
        outcome = sandbox.run(dirs, "registry.convert.confined", [str(dirs.input), str(dirs.work)],
                              file_bytes=budget, timeout=settings.convert_timeout,
                              on_message=on_message, work_cap_bytes=work_cap_bytes(settings, upload_bytes, total))
    except SandboxUnavailableError as e:
        return f"sandbox_unavailable: {e}"
    if outcome.stderr_tail.strip():
        log.info("converter output for job %s (tail):\n%s", job_id, outcome.stderr_tail)
    if outcome.timed_out:
        return (f"timeout: the conversion did not finish within {settings.convert_timeout} s "
                "(MODELDROP_CONVERT_TIMEOUT) and was stopped")
    if outcome.over_disk:
        return ("upload_too_large: the conversion's work directory grew beyond "
                f"{work_cap_bytes(settings, upload_bytes, total)} bytes and was stopped")
    try:
        document = checks.load_result(dirs.work)
    except checks.InvalidResultError as e:
        return f"converter_crashed: {e} ({_exit_reason(outcome.returncode)})"
    if document.get("error") is not None:
        code = document.get("code") if isinstance(document.get("code"), str) else "conversion_failed"
        message = checks.scrub(document["error"], dirs.work)
        if code in ("unsafe_model", "upload_too_large", "resource_limit") and not message.startswith(code):
            message = f"{code}: {message}"
        return message
    return checks.accept_variants(document, variants, dirs.work, dirs.accepted,
                                  max_artifact_bytes=max(budget, 4 * upload_bytes + (256 << 20)))


def work_cap_bytes(settings, upload_bytes: int, variants: int) -> int:  # noqa: ANN001 - Settings
    """Disk the converter may use: the expanded source, its SavedModel export and every
    variant (each about the size of the source, with the intermediates Core ML keeps)."""
    return int(settings.convert_work_factor * upload_bytes * (2 + variants)) + (256 << 20)


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "it did not exit"
    if returncode < 0 or returncode > 128:
        number = -returncode if returncode < 0 else returncode - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = {"SIGKILL": "killed, e.g. for memory", "SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit",
                "SIGSEGV": "crashed", "SIGABRT": "aborted, often out of memory"}.get(name, "")
        return f"it ended by {name}{', ' + hint if hint else ''}"
    return f"it exited with status {returncode}"
