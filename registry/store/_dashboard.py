"""Dashboard sessions, the jobs list and the retry of a failed conversion.

A dashboard session is a random id in the browser's cookie; the database keeps only its
sha256 (as it does for API tokens), the token it was made with, the session's anti-forgery
token and an expiry. A session is valid only while its token is: revoking the token ends it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import select

from registry.errors import VersionNotFailedError
from registry.schemas import JobOut
from registry.store._auth import _audit
from registry.store._base import StoreBase
from registry.tables import JobRow, ModelRow, TokenRow, VersionRow, WebSessionRow, utcnow


@dataclass(frozen=True)
class WebSession:
    """Who a dashboard session belongs to: the actor string the audit log records, the
    token's role, and the anti-forgery token its forms carry."""

    actor: str
    role: str
    csrf: str


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def _actor(row: TokenRow) -> str:
    return f"token:{row.id}" + (f"({row.name})" if row.name else "")


class DashboardStore(StoreBase):
    # -- sessions ---------------------------------------------------------------------------
    def create_web_session(self, token_hash: str, max_age: timedelta) -> tuple[str, WebSession] | None:
        """A new session for the (valid) token with this hash: (cookie value, session)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        with self.session() as s:
            token = s.exec(select(TokenRow).where(TokenRow.token_hash == token_hash)).first()
            if token is None or token.revoked:
                return None
            s.exec(delete(WebSessionRow).where(WebSessionRow.expires_at < now))  # keep the table small
            s.add(WebSessionRow(id_hash=_hash(session_id), token_id=token.id, csrf=csrf,
                                created_at=now, expires_at=now + max_age))
            _audit(s, _actor(token), "session.create", f"token:{token.id}", {})
            return session_id, WebSession(_actor(token), token.role, csrf)

    def web_session(self, session_id: str) -> WebSession | None:
        """The live session with this id, or None (unknown, expired, or its token revoked)."""
        with self.session() as s:
            row = s.get(WebSessionRow, _hash(session_id))
            if row is None or _aware(row.expires_at) <= utcnow():
                return None
            token = s.get(TokenRow, row.token_id)
            if token is None or token.revoked:
                return None
            return WebSession(_actor(token), token.role, row.csrf)

    def end_web_session(self, session_id: str) -> bool:
        with self.session() as s:
            row = s.get(WebSessionRow, _hash(session_id))
            if row is None:
                return False
            s.delete(row)
            return True

    # -- jobs -------------------------------------------------------------------------------
    def list_jobs(self, limit: int = 50, offset: int = 0) -> tuple[list[JobOut], bool]:
        """Newest first; returns (page, whether more follow)."""
        with self.session() as s:
            # One query with the model name and version number (``_job_out`` would ask two
            # more per job).
            rows = s.exec(select(JobRow, ModelRow.name, VersionRow.number)
                          .join(VersionRow, VersionRow.id == JobRow.version_id)
                          .join(ModelRow, ModelRow.id == VersionRow.model_id)
                          .order_by(JobRow.created_at.desc(), JobRow.id)
                          .offset(offset).limit(limit + 1)).all()
            return [_job_from(row, model, number) for row, model, number in rows[:limit]], len(rows) > limit

    # -- retry ------------------------------------------------------------------------------
    def retry_version(self, name: str, number: int, *, actor: str, reason: str = "",
                      eval_sha256: str | None = None,
                      metadata: dict[str, Any] | None = None) -> str:
        """Queue a new conversion job for a failed version, optionally with a new eval set
        and/or metadata (merged over the old). Returns the new job's id.

        Raises:
            VersionNotFoundError: no such version.
            VersionNotFailedError: the version is not ``failed`` (or a job for it is queued or
                running): there is nothing to retry.
        """
        with self.session() as s:
            model, row = self._version(s, name, number)
            busy = s.exec(select(JobRow.id).where(JobRow.version_id == row.id,
                                                  JobRow.state.in_(("queued", "running")))).first()
            if row.status != "failed" or busy is not None:
                raise VersionNotFailedError(
                    f"version {number} of {name!r} is {row.status!r}; only a failed conversion "
                    "can be retried", model=name, version=number, version_status=row.status)
            changes: dict[str, Any] = {"previous_error": (row.error or "")[:500]}
            if eval_sha256 is not None:
                changes["eval_sha256"] = {"from": row.eval_sha256, "to": eval_sha256}
                row.eval_sha256 = eval_sha256
            if metadata:
                merged = {**(row.metadata_json or {}), **metadata}
                changes["metadata"] = sorted(metadata)
                row.metadata_json = merged
            if reason:
                changes["reason"] = reason
            row.status, row.error, row.updated_at = "uploaded", None, utcnow()
            s.add(row)
            job_id = str(uuid.uuid4())
            s.add(JobRow(id=job_id, kind="convert", version_id=row.id))
            _audit(s, actor, "version.retry", f"model:{model.name}/version:{number}",
                   {**changes, "job": job_id})
            return job_id



def _job_from(row: JobRow, model: str, number: int) -> JobOut:
    return JobOut(id=row.id, kind=row.kind, model=model, version=number, state=row.state,
                  progress={"done": row.progress_done, "total": row.progress_total,
                            "note": row.progress_note},
                  results=row.results or {}, error=row.error, attempts=row.attempts,
                  created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)


def _aware(when: datetime) -> datetime:
    """Defensive: a naive datetime from the database is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
