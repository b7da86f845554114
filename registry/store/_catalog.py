"""Models, versions and their variants."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from registry.errors import VersionConflictError
from registry.schemas import ModelOut, VariantOut, VariantSignature, VersionOut
from registry.store._auth import _audit
from registry.store._base import StoreBase
from registry.store._delivery_types import _invalidates_cache
from registry.tables import AttachmentRow, ModelRow, VariantRow, VersionRow, utcnow

log = logging.getLogger("modeldrop.store")


def _signature(row: VariantRow) -> VariantSignature | None:
    """The stored signature, or None when there is none or it is not one (never a 500)."""
    if row.signature is None:
        return None
    try:
        return VariantSignature.model_validate(row.signature)
    except PydanticValidationError:
        log.warning("variant %s has an unreadable stored signature", row.id)
        return None


def variant_out(row: VariantRow) -> VariantOut:
    return VariantOut(name=row.name, format=row.format, size=row.size, sha256=row.sha256,
                      target_path=row.target_path, fidelity=row.fidelity or {},
                      reference_latency_ms=row.reference_latency_ms, signature=_signature(row),
                      servable=row.servable, public=row.public, reason=row.reason or row.error)


def attachment_out(row: AttachmentRow) -> dict[str, Any]:
    return {"variant": row.variant, "format": row.format, "sha256": row.sha256, "size": row.size,
            "filename": row.filename}


def _version_out(s: Session, model: ModelRow, row: VersionRow,
                 variants: list[VariantRow] | None = None,
                 attachments: list[AttachmentRow] | None = None) -> VersionOut:
    if variants is None:
        variants = s.exec(select(VariantRow).where(VariantRow.version_id == row.id)
                          .order_by(VariantRow.id)).all()
    if attachments is None:
        attachments = s.exec(select(AttachmentRow).where(AttachmentRow.version_id == row.id)
                             .order_by(AttachmentRow.id)).all()
    return VersionOut(
        model=model.name, version=row.number, status=row.status,
        source={"sha256": row.source_sha256, "size": row.source_size, "format": row.source_format,
                "filename": row.source_filename, "eval_sha256": row.eval_sha256,
                "attachments": [attachment_out(a) for a in attachments]},
        metadata=row.metadata_json, variants=[variant_out(v) for v in variants], error=row.error,
        created_at=row.created_at, created_by=row.created_by, updated_at=row.updated_at)


class CatalogStore(StoreBase):
    # -- models ---------------------------------------------------------------------------
    def list_models(self) -> list[ModelOut]:
        with self.session() as s:
            stats = dict((mid, (mx, n)) for mid, mx, n in s.exec(
                select(VersionRow.model_id, func.max(VersionRow.number), func.count(VersionRow.id))
                .group_by(VersionRow.model_id)))
            return [ModelOut(name=m.name, description=m.description, created_at=m.created_at,
                             accuracy_drop_threshold_pp=m.accuracy_drop_threshold_pp,
                             max_relative_rmse=m.max_relative_rmse,
                             latest_version=stats.get(m.id, (None, 0))[0],
                             version_count=stats.get(m.id, (None, 0))[1])
                    for m in s.exec(select(ModelRow).order_by(ModelRow.name))]

    def get_model(self, name: str) -> ModelOut:
        with self.session() as s:
            m = self._model(s, name)
            mx, n = s.exec(select(func.max(VersionRow.number), func.count(VersionRow.id))
                           .where(VersionRow.model_id == m.id)).one()
            return ModelOut(name=m.name, description=m.description, created_at=m.created_at,
                            accuracy_drop_threshold_pp=m.accuracy_drop_threshold_pp,
                            max_relative_rmse=m.max_relative_rmse,
                            latest_version=mx, version_count=n)

    def update_model(self, name: str, changes: dict[str, Any], actor: str) -> ModelOut:
        """Model-wide settings (description, servability threshold); audited."""
        with self.session() as s:
            m = self._model(s, name)
            before = {k: getattr(m, k) for k in changes}
            for key, value in changes.items():
                setattr(m, key, value)
            s.add(m)
            _audit(s, actor, "model.update", f"model:{name}",
                   {k: {"from": before[k], "to": v} for k, v in changes.items()})
        return self.get_model(name)

    # -- versions -------------------------------------------------------------------------
    def create_version(self, name: str, *, sha256: str, size: int, source_format: str,
                       filename: str, metadata: dict[str, Any], eval_sha256: str | None,
                       actor: str, number: int | None = None,
                       attachments: list[dict[str, Any]] | None = None) -> tuple[VersionOut, bool]:
        """Create the next version, or return the existing one for identical bytes.

        Returns (version, created). Identical bytes are idempotent; a different file under an
        explicitly requested, existing version number is a conflict, and so are the same
        source bytes sent with other attached artifacts (``attachments``: dicts of variant,
        format, sha256, size, filename) than that version has.
        """
        for attempt in range(5):
            try:
                return self._create_version_once(name, sha256, size, source_format, filename,
                                                 metadata, eval_sha256, actor, number, attachments or [])
            except IntegrityError:
                # A concurrent upload took the number (or created the model); look again.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _create_version_once(self, name, sha256, size, source_format, filename, metadata,
                             eval_sha256, actor, number, attachments) -> tuple[VersionOut, bool]:
        with self.session() as s:
            model = s.exec(select(ModelRow).where(ModelRow.name == name)).first()
            if model is None:
                model = ModelRow(name=name, created_by=actor,
                                 description=metadata.get("description", "")[:500])
                s.add(model)
                s.flush()
                _audit(s, actor, "model.create", f"model:{name}", {})
            same = s.exec(select(VersionRow).where(VersionRow.model_id == model.id,
                                                   VersionRow.source_sha256 == sha256)).first()
            if number is not None:
                taken = s.exec(select(VersionRow).where(VersionRow.model_id == model.id,
                                                        VersionRow.number == number)).first()
                if taken is not None and taken.source_sha256 != sha256:
                    raise VersionConflictError(
                        f"version {number} of {name!r} already exists with different content "
                        f"(sha256 {taken.source_sha256[:12]}…)", model=name, version=number)
                if taken is None and same is not None:
                    raise VersionConflictError(
                        f"these bytes are already version {same.number} of {name!r}",
                        model=name, version=same.number)
            if same is not None:
                had = {(a.variant, a.sha256) for a in s.exec(
                    select(AttachmentRow).where(AttachmentRow.version_id == same.id))}
                if attachments and had != {(a["variant"], a["sha256"]) for a in attachments}:
                    raise VersionConflictError(
                        f"these bytes are already version {same.number} of {name!r}, with "
                        f"{'other' if had else 'no'} attached artifacts: a version's attachments are fixed "
                        "when it is created; push the source again as a new file to attach others",
                        model=name, version=same.number)
                return _version_out(s, model, same), False
            if number is None:
                current = s.exec(select(func.max(VersionRow.number))
                                 .where(VersionRow.model_id == model.id)).one()
                number = (current or 0) + 1
            row = VersionRow(model_id=model.id, number=number, source_sha256=sha256,
                             source_size=size, source_format=source_format,
                             source_filename=filename, eval_sha256=eval_sha256,
                             metadata_json=metadata, created_by=actor)
            s.add(row)
            s.flush()
            for a in attachments:
                s.add(AttachmentRow(version_id=row.id, variant=a["variant"], format=a["format"],
                                    sha256=a["sha256"], size=a["size"], filename=a["filename"]))
            _audit(s, actor, "version.create", f"model:{name}/version:{number}",
                   {"sha256": sha256, "size": size,
                    **({"attachments": {a["variant"]: a["sha256"] for a in attachments}} if attachments else {})})
            return _version_out(s, model, row), True

    def get_version(self, name: str, number: int) -> VersionOut:
        with self.session() as s:
            model, row = self._version(s, name, number)
            return _version_out(s, model, row)

    def version_id(self, name: str, number: int) -> int:
        with self.session() as s:
            return self._version(s, name, number)[1].id

    def list_versions(self, name: str, limit: int = 20,
                      before: int | None = None) -> tuple[list[VersionOut], int | None]:
        """Newest first. Returns (page, cursor for the next page or None)."""
        with self.session() as s:
            model = self._model(s, name)
            q = select(VersionRow).where(VersionRow.model_id == model.id)
            if before is not None:
                q = q.where(VersionRow.number < before)
            rows = s.exec(q.order_by(VersionRow.number.desc()).limit(limit + 1)).all()
            # The page's variants in one query, not one per version.
            by_version: dict[int, list[VariantRow]] = {r.id: [] for r in rows[:limit]}
            attached: dict[int, list[AttachmentRow]] = {r.id: [] for r in rows[:limit]}
            if by_version:
                for v in s.exec(select(VariantRow).where(VariantRow.version_id.in_(list(by_version)))
                                .order_by(VariantRow.id)):
                    by_version[v.version_id].append(v)
                for a in s.exec(select(AttachmentRow).where(AttachmentRow.version_id.in_(list(attached)))
                                .order_by(AttachmentRow.id)):
                    attached[a.version_id].append(a)
            page = [_version_out(s, model, r, by_version[r.id], attached[r.id]) for r in rows[:limit]]
            return page, (rows[limit - 1].number if len(rows) > limit else None)

    def update_metadata(self, name: str, number: int, patch: dict[str, Any], actor: str) -> VersionOut:
        with self.session() as s:
            model, row = self._version(s, name, number)
            before = dict(row.metadata_json)
            merged = dict(before)
            for key, value in patch.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            row.metadata_json = merged
            row.updated_at = utcnow()
            s.add(row)
            changes = {k: {"from": before.get(k), "to": merged.get(k)}
                       for k in merged if before.get(k) != merged.get(k)}
            _audit(s, actor, "version.update", f"model:{name}/version:{number}", changes)
            return _version_out(s, model, row)

    def set_version_status(self, version_id: int, status: str, error: str | None = None) -> None:
        with self.session() as s:
            row = s.get(VersionRow, version_id)
            row.status = status
            row.error = error
            row.updated_at = utcnow()
            s.add(row)

    def model_threshold(self, version_id: int) -> float | None:
        """The servability threshold for a version: its upload's, else its model's, else None."""
        with self.session() as s:
            row = s.get(VersionRow, version_id)
            meta = row.metadata_json or {}
            if meta.get("accuracy_drop_threshold_pp") is not None:
                return float(meta["accuracy_drop_threshold_pp"])
            return s.get(ModelRow, row.model_id).accuracy_drop_threshold_pp

    def model_max_relative_rmse(self, version_id: int) -> float | None:
        """The relative-RMSE limit the version's model sets for regression outputs, or None
        (the upload's own value and the server default are the job runner's to weigh)."""
        with self.session() as s:
            row = s.get(VersionRow, version_id)
            return s.get(ModelRow, row.model_id).max_relative_rmse

    # -- variants -------------------------------------------------------------------------
    def record_variant(self, version_id: int, *, name: str, format: str, sha256: str | None,
                       size: int | None, target_path: str | None, fidelity: dict[str, Any],
                       reference_latency_ms: dict[str, Any] | None, servable: bool,
                       reason: str | None, error: str | None,
                       signature: dict[str, Any] | None = None) -> None:
        """Upsert one variant; called only after its file is stored, so it is never half-published.

        A new variant is confidential (``public`` false); ``target_path`` is the path it will
        be listed under when a release makes it deliverable. Re-recording different bytes
        makes the row confidential again: the new bytes were never published.
        """
        with self.session() as s:
            row = s.exec(select(VariantRow).where(VariantRow.version_id == version_id,
                                                  VariantRow.name == name)).first() or \
                VariantRow(version_id=version_id, name=name, format=format)
            if row.sha256 != sha256 or row.target_path != target_path:
                row.public = False
            row.format, row.sha256, row.size, row.target_path = format, sha256, size, target_path
            row.fidelity, row.reference_latency_ms = fidelity, reference_latency_ms
            row.signature = signature
            row.servable, row.reason, row.error = servable, reason, error
            s.add(row)

    def source_target_paths(self) -> list[str]:
        """``<model>/<version>/source.<format>`` of every version: where releases before
        sources became confidential listed them in TUF targets."""
        with self.session() as s:
            return [f"{name}/{number}/source.{fmt}" for name, number, fmt in s.exec(
                select(ModelRow.name, VersionRow.number, VersionRow.source_format)
                .join(ModelRow, ModelRow.id == VersionRow.model_id)
                .order_by(VersionRow.id)).all()]

    @_invalidates_cache
    def publish_variants(self, version_id: int, names: list[str], actor: str) -> list[str]:
        """Mark servable variants of a version public (audited); returns the names newly marked.

        Call only after their TUF targets are listed: ``public`` is what lets the artifact
        route and the manifest hand them out without a token. Never cleared.
        """
        if not names:
            return []
        with self.session() as s:
            rows = s.exec(select(VariantRow).where(
                VariantRow.version_id == version_id, VariantRow.name.in_(names),
                VariantRow.servable == True, VariantRow.sha256.is_not(None),  # noqa: E712
                VariantRow.target_path.is_not(None), VariantRow.public == False)  # noqa: E712
                .order_by(VariantRow.id)).all()
            if not rows:
                return []
            version = s.get(VersionRow, version_id)
            model = s.get(ModelRow, version.model_id)
            for row in rows:
                row.public = True
                s.add(row)
            _audit(s, actor, "variant.publish", f"model:{model.name}/version:{version.number}",
                   {"variants": [r.name for r in rows],
                    "targets": {r.target_path: r.sha256 for r in rows}})
            return [r.name for r in rows]

    def public_artifacts(self, shas: Iterable[str]) -> set[str]:
        """The given sha256s that are public: some public variant or kept delta has them.

        One blob may back several variants (identical bytes in two versions); it is public
        as soon as any of them is, since the bytes are then in TUF targets anyway.
        """
        from registry.tables import DeltaRow

        wanted = sorted(set(shas))
        if not wanted:
            return set()
        with self.session() as s:
            found = set(s.exec(select(VariantRow.sha256).where(
                VariantRow.sha256.in_(wanted), VariantRow.public == True)).all())  # noqa: E712
            found |= set(s.exec(select(DeltaRow.sha256).where(DeltaRow.sha256.in_(wanted))).all())
            return found

    def artifact_visibility(self, sha256: str) -> str | None:
        """``"public"``, ``"confidential"`` (a source, eval set or unreleased variant: a
        reader token is needed), or None when the registry recorded no such artifact."""
        if self.public_artifacts([sha256]):
            return "public"
        with self.session() as s:
            known = any(s.exec(q).first() is not None for q in (
                select(VersionRow.id).where(VersionRow.source_sha256 == sha256).limit(1),
                select(VariantRow.id).where(VariantRow.sha256 == sha256).limit(1),
                select(VersionRow.id).where(VersionRow.eval_sha256 == sha256).limit(1),
                select(AttachmentRow.id).where(AttachmentRow.sha256 == sha256).limit(1)))
            return "confidential" if known else None
