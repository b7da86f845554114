"""``modeldrop fsck``: find (and with ``repair`` fix) what a crash, a full disk or a lost file
left inconsistent between the database, the blob store and the TUF repository.

Checked in both directions, on either blob backend (local or S3):

* ``corrupt_blob``: a blob whose bytes no longer hash to its name. Repair deletes it (a row
  that needs it then shows as ``missing_blob``: re-upload that version).
* ``orphan_blob``: a blob no row refers to (an upload that failed after its bytes were
  stored, a crash between blob and row). Repair deletes it.
* ``missing_blob``: a row (source, eval set, attached artifact, variant, delta) whose blob is
  gone. Repair marks what used it: the version failed (source, eval set or attached artifact)
  or the variant not servable.
* ``missing_target_blob``: a TUF target whose bytes are gone: devices would be told to fetch
  them. Repair removes the target (signing new targets/snapshot/timestamp metadata).
* ``stuck_job``: a job ``running`` whose worker stopped heart-beating. Repair requeues it
  (or fails it once its attempts are used up).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["LOST", "Finding", "fsck"]

#: What a repaired ``missing_blob`` leaves on the rows that needed the blob.
LOST = "its blob is missing from storage (modeldrop fsck --repair)"


@dataclass
class Finding:
    kind: str
    subject: str  # a sha256, a TUF target path or a job id
    detail: str
    repaired: bool = False

    def to_dict(self) -> dict:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail,
                "repaired": self.repaired}


def _hash_of(blobs, sha256: str) -> str:
    h = hashlib.sha256()
    for chunk in blobs.open_range(sha256):
        h.update(chunk)
    return h.hexdigest()


def fsck(services, *, repair: bool = False) -> list[Finding]:
    """Check everything; with ``repair`` fix what can be fixed. Returns the findings."""
    store, blobs, signing = services.store, services.blobs, services.signing
    findings: list[Finding] = []
    stored = set(blobs.iter_sha256())
    for sha in sorted(stored):
        try:
            actual = _hash_of(blobs, sha)
        except Exception as e:  # noqa: BLE001 - an empty or unreadable blob is corrupt too
            actual = f"unreadable ({type(e).__name__})"
        if not hmac.compare_digest(actual, sha):
            f = Finding("corrupt_blob", sha, f"its bytes hash to {actual}")
            if repair:
                blobs.delete(sha)
                stored.discard(sha)
                f.repaired = True
            findings.append(f)
    refs = store.blob_references(lost_mark=LOST)
    # A ruleset is referenced by nothing but its TUF target: a listed target keeps its blob.
    target_hashes = {path: (signing.target_info(path) or {}).get("hashes", {}).get("sha256", "")
                     for path in sorted(signing.target_paths())}
    for sha in sorted(stored - refs.keys() - set(target_hashes.values())):
        f = Finding("orphan_blob", sha, "no version, attachment, variant, delta or TUF target refers to it")
        if repair:
            blobs.delete(sha)
            f.repaired = True
        findings.append(f)
    for sha in sorted(refs.keys() - stored):
        f = Finding("missing_blob", sha, "needed by " + ", ".join(refs[sha]))
        if repair:
            store.mark_blob_lost(sha, LOST)
            f.repaired = True
        findings.append(f)
    lost_targets = []
    for path, sha in target_hashes.items():
        if sha not in stored:
            lost_targets.append(Finding("missing_target_blob", path, f"its bytes ({sha[:12]}…) are gone"))
    if repair and lost_targets:
        signing.remove_targets([f.subject for f in lost_targets], missing_ok=True)
        for f in lost_targets:
            f.repaired = True
    findings += lost_targets
    stale_after = timedelta(seconds=services.settings.job_stale_after)
    stuck = store.stale_running_jobs(stale_after)
    if stuck:
        requeued = set(store.requeue_stale_jobs(stale_after)) if repair else set()
        findings += [Finding("stuck_job", job_id, f"running, no heartbeat for over "
                             f"{services.settings.job_stale_after} s (its worker died)", job_id in requeued)
                     for job_id in stuck]
    return findings
