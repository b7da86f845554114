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

Where it runs: a daemon thread in the process that published the release — the web
process in the embedded default. bsdiff4 holds both files and a suffix array in memory
(roughly 17x the base size at peak), so artifacts above ``DELTA_MAX_BYTES`` are skipped.
A computation lost with its process (restart mid-patch) is retried the next time a
release is published on the channel, because pairs already recorded are skipped.
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
    "schedule_release_deltas",
    "wait_for_deltas",
]

log = logging.getLogger("modeldrop.deltas")

DELTA_MAX_BYTES = 128 << 20  # bytes; larger artifacts get no patch (bsdiff memory ~17x)

_threads: list[threading.Thread] = []
_threads_lock = threading.Lock()
_compute_lock = threading.Lock()  # one patch at a time per process: bounded memory


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
            if max(base_size or 0, target.size) > DELTA_MAX_BYTES:
                log.info("no delta %s -> %s: larger than %d bytes", base_sha[:12],
                         target.sha256[:12], DELTA_MAX_BYTES)
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


def schedule_release_deltas(services: Any, release: Any) -> threading.Thread | None:
    """Compute the release's patches in a daemon thread (see the module docstring)."""

    def run() -> None:
        try:
            results = compute_release_deltas(services, release.model, release.channel,
                                             release.counter, release.version)
            kept = sum(1 for r in results if r["kept"])
            if results:
                log.info("deltas for %s/%s release %d: %d of %d kept", release.model,
                         release.channel, release.counter, kept, len(results))
        except Exception:  # noqa: BLE001 - a patch is an optimisation; log and carry on
            log.exception("computing deltas for %s/%s release %d failed", release.model,
                          release.channel, release.counter)

    thread = threading.Thread(target=run, name=f"deltas-{release.model}-{release.counter}",
                              daemon=True)
    with _threads_lock:
        _threads[:] = [t for t in _threads if t.is_alive()]
        _threads.append(thread)
    thread.start()
    return thread


def wait_for_deltas(timeout: float = 60.0) -> bool:
    """Wait for this process's delta threads (tests, orderly shutdown); True if all ended."""
    with _threads_lock:
        pending = list(_threads)
    for thread in pending:
        thread.join(timeout)
    return not any(t.is_alive() for t in pending)
