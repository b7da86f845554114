"""What ``modeldrop fsck`` asks of the database: every blob a row refers to, and where."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlmodel import select

from registry.store._base import StoreBase
from registry.tables import AttachmentRow, DeltaRow, JobRow, ModelRow, VariantRow, VersionRow, utcnow


class FsckStore(StoreBase):
    def blob_references(self, lost_mark: str | None = None) -> dict[str, list[str]]:
        """sha256 -> what refers to it ("m v3 source", "m v3 variant tflite-fp32", ...); rows
        already marked lost with ``lost_mark`` (by an earlier repair) are left out."""
        refs: dict[str, list[str]] = defaultdict(list)
        with self.session() as s:
            for name, number, src, ev, error in s.exec(
                    select(ModelRow.name, VersionRow.number, VersionRow.source_sha256,
                           VersionRow.eval_sha256, VersionRow.error)
                    .join(VersionRow, VersionRow.model_id == ModelRow.id)):
                if lost_mark is not None and error == lost_mark:
                    continue
                refs[src].append(f"{name} v{number} source")
                if ev:
                    refs[ev].append(f"{name} v{number} eval set")
            for name, number, variant, sha, reason in s.exec(
                    select(ModelRow.name, VersionRow.number, VariantRow.name, VariantRow.sha256,
                           VariantRow.reason)
                    .join(VersionRow, VersionRow.model_id == ModelRow.id)
                    .join(VariantRow, VariantRow.version_id == VersionRow.id)
                    .where(VariantRow.sha256.is_not(None))):
                if lost_mark is not None and reason == lost_mark:
                    continue
                refs[sha].append(f"{name} v{number} variant {variant}")
            # An attached artifact is the input of its version's conversion (and of a retry),
            # referenced whether or not its variant row exists yet.
            for name, number, variant, sha, error in s.exec(
                    select(ModelRow.name, VersionRow.number, AttachmentRow.variant, AttachmentRow.sha256,
                           VersionRow.error)
                    .join(VersionRow, VersionRow.model_id == ModelRow.id)
                    .join(AttachmentRow, AttachmentRow.version_id == VersionRow.id)):
                if lost_mark is not None and error == lost_mark:
                    continue
                refs[sha].append(f"{name} v{number} attached artifact {variant}")
            for base, target, sha in s.exec(select(DeltaRow.base_sha256, DeltaRow.target_sha256,
                                                   DeltaRow.sha256).where(DeltaRow.sha256.is_not(None))):
                refs[sha].append(f"delta {base[:12]}→{target[:12]}")
        return dict(refs)

    def blob_referenced(self, sha256: str) -> bool:
        return sha256 in self.blob_references()

    def mark_blob_lost(self, sha256: str, why: str) -> None:
        """What needed a lost blob stops being offered: a version whose source, eval set or
        attached artifact it was is failed, a variant it was is not servable."""
        with self.session() as s:
            attached = select(AttachmentRow.version_id).where(AttachmentRow.sha256 == sha256)
            for v in s.exec(select(VersionRow).where(
                    (VersionRow.source_sha256 == sha256) | (VersionRow.eval_sha256 == sha256)
                    | VersionRow.id.in_(attached))):
                v.status, v.error = "failed", why
                s.add(v)
            for variant in s.exec(select(VariantRow).where(VariantRow.sha256 == sha256)):
                variant.servable, variant.reason = False, why
                s.add(variant)
        self._delivery_changed()

    def stale_running_jobs(self, stale_after: timedelta) -> list[str]:
        cutoff = utcnow() - stale_after
        with self.session() as s:
            return list(s.exec(select(JobRow.id).where(JobRow.state == "running",
                                                       JobRow.heartbeat_at < cutoff)))
