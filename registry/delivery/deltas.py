"""Delta patches: bsdiff4 from the artifacts earlier releases served to the new one.

When a release is published (promote, rollback, experiment winner), a patch is computed for
every servable variant of its version from each artifact of the same variant name that an
earlier release of the channel served. A patch is kept only when it is smaller than the
artifact; kept patches are stored as blobs, published as TUF targets
(``<model>/<version>/<variant>.from-<base sha256[:16]>.bsdiff``, ``custom.kind = "delta"``)
and recorded, and the manifest offers one when the device's ``installed_sha256`` is its
base. A pair is computed once: a patch that was not smaller is recorded too (``sha256``
null), so it is not tried again.

A patch is derived from both of its ends, so it is computed (and published) only when
both are public (``registry.delivery.publication``); a pair with a confidential end is
skipped, not recorded, and tried again by a later release. Public never reverts, so the
check cannot go stale, and a recorded patch with a sha256 is always a public artifact.

Where it runs: a job of kind ``deltas`` on the conversion workers (in-process or Celery),
enqueued when a release is published, never a thread of the web process. The job computes
the patches of every release of its version (pairs already recorded are skipped, so a
job that runs twice, or after its worker died, does no work twice), publishes each kept patch
as a TUF target from the worker (the trusted side that holds the targets key) and is
retried like a conversion: a worker lost mid-job is requeued by the heartbeat check, an error
is retried up to the job's attempts. Memory is bounded by ``MODELDROP_DELTA_MAX_BYTES``:
bsdiff4 holds both files and a suffix array, measured here at 15x the artifact on top of
the two files (32 MiB: +480 MiB, 36 s), so the default of 64 MiB peaks near 1.1 GiB per
worker; larger artifacts get no patch. One patch at a time per process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

__all__ = [
    "DELTA_MAX_BYTES",
    "compute_release_deltas",
    "delta_target_path",
    "run_delta_job",
    "schedule_release_deltas",
    "wait_for_deltas",
]

log = logging.getLogger("modeldrop.deltas")

DELTA_MAX_BYTES = 64 << 20  # bytes; the default of MODELDROP_DELTA_MAX_BYTES

_compute_lock = threading.Lock()  # one patch at a time per process: bounded memory
_scheduled: list[Any] = []  # the services that enqueued delta jobs here (wait_for_deltas)
_scheduled_lock = threading.Lock()


def delta_target_path(model: str, version: int, variant: str, base_sha256: str) -> str:
    """TUF target path of a patch to ``<model>/<version>/<variant>`` from ``base_sha256``."""
    return f"{model}/{version}/{variant}.from-{base_sha256[:16]}.bsdiff"


def compute_release_deltas(services: Any, model: str, channel: str, counter: int,
                           version: int) -> list[dict[str, Any]]:
    """Compute the missing patches for one release; returns one summary per pair tried."""
    import bsdiff4

    store, blobs = services.store, services.blobs
    found = store.get_version(model, version)
    targets = [v for v in found.variants if v.servable and v.sha256 and v.size]
    bases = store.release_artifacts(model, channel, counter)
    public = store.public_artifacts([t.sha256 for t in targets] + [b[2] for b in bases])
    done = []
    for target in targets:
        for base_version, base_variant, base_sha, base_size in bases:
            if base_variant != target.name or base_sha == target.sha256:
                continue
            if target.sha256 not in public or base_sha not in public:
                continue  # a confidential end: the patch would leak it (see module doc)
            if store.find_delta(base_sha, target.sha256) is not None:
                continue
            limit = getattr(services.settings, "delta_max_bytes", DELTA_MAX_BYTES)
            if max(base_size or 0, target.size) > limit:
                log.info("no delta %s -> %s: larger than %d bytes", base_sha[:12],
                         target.sha256[:12], limit)
                continue
            with _compute_lock:
                patch = bsdiff4.diff(blobs.read_bytes(base_sha), blobs.read_bytes(target.sha256))
            summary = {"base_version": base_version, "base_sha256": base_sha,
                       "target_sha256": target.sha256, "variant": target.name,
                       "patch_size": len(patch), "artifact_size": target.size}
            if len(patch) >= target.size:
                store.record_delta(base_sha, target.sha256, sha256=None, size=len(patch),
                                   target_path=None)
                done.append({**summary, "kept": False})
                continue
            path = _publish(services, model, version, target.name, base_sha, target.sha256,
                            patch)
            store.record_delta(base_sha, target.sha256, sha256=hashlib.sha256(patch).hexdigest(),
                               size=len(patch), target_path=path)
            done.append({**summary, "kept": True, "target_path": path})
    return done


def _publish(services: Any, model: str, version: int, variant: str, base_sha: str,
             target_sha: str, patch: bytes) -> str:
    """Store the patch, then list it as a TUF target: only then is it recorded (offered)."""
    info = services.blobs.put_bytes(patch)
    path = delta_target_path(model, version, variant, base_sha)
    if services.signing is not None:
        services.signing.add_targets([services.target_spec(
            path, info.sha256, info.size, model=model, version=version, variant=variant,
            format="bsdiff4", kind="delta", base_sha256=base_sha, target_sha256=target_sha)])
    return path


def schedule_release_deltas(services: Any, release: Any) -> str:
    """Enqueue a ``deltas`` job for the release's version; returns the job id."""
    store = services.store
    job_id = store.create_job(store.version_id(release.model, release.version), kind="deltas")
    services.jobs.enqueue(job_id)
    with _scheduled_lock:
        if not any(s is services for s in _scheduled):
            _scheduled.append(services)
    return job_id


def run_delta_job(services: Any, job: Any) -> str:
    """Run a claimed ``deltas`` job: the patches of every release of its version.

    Returns the final state; an error puts the job back in the queue while it has attempts
    left (``registry.jobs`` retries it like a conversion), then fails it.
    """
    from registry.jobs.results import scrub
    from registry.jobs.runner import HEARTBEAT_SECONDS, _heartbeat

    store = services.store
    stop = threading.Event()
    interval = min(HEARTBEAT_SECONDS, services.settings.job_stale_after / 4)
    threading.Thread(target=_heartbeat, args=(store, job.id, stop, interval), daemon=True).start()
    try:
        releases = [r for r in store.list_releases(job.model, limit=1000) if r.version == job.version]
        results = []
        for i, release in enumerate(releases):
            store.job_progress(job.id, i, len(releases), f"release {release.channel} #{release.counter}")
            results += compute_release_deltas(services, job.model, release.channel, release.counter,
                                              job.version)
    except Exception as e:
        log.exception("delta job %s failed", job.id)
        error = scrub(f"{type(e).__name__}: {e}")
        if store.requeue_job(job.id, f"retrying after: {error}") == "queued":
            services.jobs.enqueue(job.id)
            return "queued"
        store.finish_job(job.id, "failed", {}, error)
        return "failed"
    finally:
        stop.set()
    kept = sum(1 for r in results if r["kept"])
    if results:
        log.info("deltas for %s version %d: %d of %d kept", job.model, job.version, kept, len(results))
    store.job_progress(job.id, len(releases), len(releases), "")
    store.finish_job(job.id, "done", {"tried": len(results), "kept": kept,
                                      "patches": [r.get("target_path") for r in results if r["kept"]]})
    return "done"


def wait_for_deltas(timeout: float = 60.0) -> bool:
    """Drain the delta jobs enqueued by this process (tests, benchmarks): queued ones are run
    here, ones a worker is running are waited for. True if none is left queued or running."""
    import time

    with _scheduled_lock:
        targets = list(_scheduled)
    deadline = time.monotonic() + timeout
    for services in targets:
        try:
            while True:
                job = services.store.claim_job(kind="deltas")
                if job is not None:
                    run_delta_job(services, job)
                    continue
                if not services.store.has_jobs(kind="deltas", states=("queued", "running")):
                    break
                if time.monotonic() > deadline:
                    forget_scheduled(services)  # this call fails; a later one is not held up by it
                    return False
                time.sleep(0.1)
        except Exception:
            log.debug("cannot drain the delta jobs of %r", services, exc_info=True)
        forget_scheduled(services)  # drained (or gone)
    return True


def forget_scheduled(services: Any) -> None:
    """Stop tracking ``services`` for :func:`wait_for_deltas` (its owner is closing it)."""
    with _scheduled_lock:
        _scheduled[:] = [s for s in _scheduled if s is not services]
