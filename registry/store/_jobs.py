"""Persisted job state: the database is the source of truth for every job backend."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, select

from registry.errors import JobNotFoundError
from registry.schemas import JobOut, JobQueueOut
from registry.store._base import StoreBase
from registry.tables import JobRow, ModelRow, VersionRow, utcnow


def _job_out(s: Session, row: JobRow) -> JobOut:
    version = s.get(VersionRow, row.version_id)
    model = s.get(ModelRow, version.model_id)
    return JobOut(id=row.id, kind=row.kind, model=model.name, version=version.number,
                  state=row.state,
                  progress={"done": row.progress_done, "total": row.progress_total,
                            "note": row.progress_note},
                  results=row.results or {}, error=row.error, attempts=row.attempts,
                  created_at=row.created_at, started_at=row.started_at,
                  finished_at=row.finished_at)


class JobStore(StoreBase):
    def create_job(self, version_id: int, kind: str = "convert", max_attempts: int = 3) -> str:
        job_id = str(uuid.uuid4())
        with self.session() as s:
            s.add(JobRow(id=job_id, kind=kind, version_id=version_id, max_attempts=max_attempts))
        return job_id

    def get_job(self, job_id: str) -> JobOut:
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"job {job_id!r} does not exist", job=job_id)
            return _job_out(s, row)

    def latest_job_for_version(self, version_id: int) -> str | None:
        with self.session() as s:
            return s.exec(select(JobRow.id).where(JobRow.version_id == version_id,
                                                  JobRow.kind == "convert")
                          .order_by(JobRow.created_at.desc())).first()

    def claim_job(self, job_id: str | None = None, *, kind: str | None = None,
                  take_over_after: timedelta | None = None) -> JobOut | None:
        """Atomically move one queued job (or the given one) to running; None if none/taken.

        With ``take_over_after``, the given job is also taken when it is ``running`` but its
        heartbeat is older than that (its worker died: a Celery message redelivered after
        the worker was killed), as long as it has attempts left.
        """
        with self.session() as s:
            if job_id is None:
                q = select(JobRow.id).where(JobRow.state == "queued")
                if kind is not None:
                    q = q.where(JobRow.kind == kind)
                job_id = s.exec(q.order_by(JobRow.created_at).limit(1)).first()
                if job_id is None:
                    return None
            now = utcnow()
            claimable = JobRow.state == "queued"
            if take_over_after is not None:
                claimable = claimable | ((JobRow.state == "running")
                                         & (JobRow.heartbeat_at < now - take_over_after)
                                         & (JobRow.attempts < JobRow.max_attempts))
            result = s.exec(update(JobRow).where(JobRow.id == job_id, claimable)
                            .values(state="running", started_at=now, heartbeat_at=now,
                                    attempts=JobRow.attempts + 1))
            if result.rowcount != 1:
                return None
            return _job_out(s, s.get(JobRow, job_id))

    def has_jobs(self, kind: str, states: tuple[str, ...]) -> bool:
        """Whether a job of ``kind`` is in one of ``states``."""
        with self.session() as s:
            return s.exec(select(JobRow.id).where(JobRow.kind == kind, JobRow.state.in_(states))
                          .limit(1)).first() is not None

    def job_progress(self, job_id: str, done: int, total: int, note: str = "") -> None:
        with self.session() as s:
            s.exec(update(JobRow).where(JobRow.id == job_id).values(
                progress_done=done, progress_total=total, progress_note=note, heartbeat_at=utcnow()))

    def heartbeat(self, job_id: str) -> None:
        with self.session() as s:
            s.exec(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow()))

    def finish_job(self, job_id: str, state: str, results: dict[str, Any],
                   error: str | None = None) -> None:
        with self.session() as s:
            s.exec(update(JobRow).where(JobRow.id == job_id).values(
                state=state, results=results, error=error, finished_at=utcnow()))

    def job_queue(self, stale_after: timedelta) -> JobQueueOut:
        """Counts for ``modeldrop doctor``: a queued job that waits long while nothing runs, or
        running jobs that stopped heart-beating, mean no worker is alive."""
        cutoff = utcnow() - stale_after
        with self.session() as s:
            queued = s.exec(select(func.count(), func.min(JobRow.created_at))
                            .where(JobRow.state == "queued")).one()
            running = s.exec(select(func.count()).where(JobRow.state == "running")).one()
            stale = s.exec(select(func.count()).where(JobRow.state == "running",
                                                      JobRow.heartbeat_at < cutoff)).one()
        return JobQueueOut(queued=queued[0], oldest_queued_at=queued[1], running=running,
                           stale_running=stale)

    def job_metrics(self) -> dict[str, Any]:
        """Figures for ``/metrics``: jobs by (kind, state), the oldest queued job's age, the
        mean run time of the last 1000 finished jobs by (kind, state), guardrail halts."""
        from registry.tables import ExperimentRow, ReleaseRow

        with self.session() as s:
            counts = {(k, st): n for k, st, n in s.exec(
                select(JobRow.kind, JobRow.state, func.count()).group_by(JobRow.kind, JobRow.state)).all()}
            oldest = s.exec(select(func.min(JobRow.created_at)).where(JobRow.state == "queued")).one()
            recent = s.exec(select(JobRow.kind, JobRow.state, JobRow.started_at, JobRow.finished_at,
                                   VersionRow.source_format)
                            .join(VersionRow, VersionRow.id == JobRow.version_id)
                            .where(JobRow.finished_at.is_not(None), JobRow.started_at.is_not(None))
                            .order_by(JobRow.finished_at.desc()).limit(1000)).all()
            by_source = {(k, f, st): n for k, f, st, n in s.exec(
                select(JobRow.kind, VersionRow.source_format, JobRow.state, func.count())
                .join(VersionRow, VersionRow.id == JobRow.version_id)
                .group_by(JobRow.kind, VersionRow.source_format, JobRow.state)).all()}
            halts = {"release": s.exec(select(func.count()).select_from(ReleaseRow)
                                       .where(ReleaseRow.halted_reason.is_not(None))).one(),
                     "experiment": s.exec(select(func.count()).select_from(ExperimentRow)
                                          .where(ExperimentRow.halted_reason.is_not(None))).one()}
        sums: dict[tuple[str, str], list[float]] = {}
        durations: dict[tuple[str, str, str], list[float]] = {}
        for kind, state, started, finished, source_format in recent:
            seconds = (finished - started).total_seconds()
            sums.setdefault((kind, state), []).append(seconds)
            durations.setdefault((kind, source_format, state), []).append(seconds)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=utcnow().tzinfo)
        return {"jobs": counts, "halts": halts,
                "oldest_queued_seconds": None if oldest is None else (utcnow() - oldest).total_seconds(),
                "recent_run_seconds": {k: sum(v) / len(v) for k, v in sums.items()},
                # (kind, source format, state) -> count / run seconds of the recent finished
                "jobs_by_source": by_source,
                "recent_durations_by_source": {k: sorted(v) for k, v in durations.items()}}

    def job_route(self, job_id: str) -> tuple[str, str]:
        """(kind, source format) of a job: what decides its Celery queue."""
        with self.session() as s:
            row = s.exec(select(JobRow.kind, VersionRow.source_format)
                         .join(VersionRow, VersionRow.id == JobRow.version_id)
                         .where(JobRow.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(f"job {job_id!r} does not exist", job=job_id)
        return row[0], row[1]

    def queued_jobs(self, older_than: timedelta) -> list[tuple[str, str, str]]:
        """(job id, kind, source format) of jobs queued for longer than ``older_than``."""
        cutoff = utcnow() - older_than
        with self.session() as s:
            return [tuple(r) for r in s.exec(
                select(JobRow.id, JobRow.kind, VersionRow.source_format)
                .join(VersionRow, VersionRow.id == JobRow.version_id)
                .where(JobRow.state == "queued", JobRow.created_at < cutoff)).all()]

    def fail_queued_job(self, job_id: str, error: str) -> bool:
        """Fail a job that is still queued (and its version, for a conversion); False when a
        worker took it meanwhile."""
        with self.session() as s:
            # One conditional UPDATE, like claim_job: a worker claiming it now wins or loses whole.
            taken = s.exec(update(JobRow).where(JobRow.id == job_id, JobRow.state == "queued")
                           .values(state="failed", error=error, finished_at=utcnow()))
            if taken.rowcount != 1:
                return False
            row = s.get(JobRow, job_id)
            if row.kind == "convert":
                version = s.get(VersionRow, row.version_id)
                version.status, version.error, version.updated_at = "failed", error, utcnow()
            return True

    def live_job_ids(self, stale_after: timedelta) -> set[str]:
        """Jobs that are ``running`` with a heartbeat younger than ``stale_after``: a live
        worker (perhaps another one on the same data dir) is running them."""
        cutoff = utcnow() - stale_after
        with self.session() as s:
            return set(s.exec(select(JobRow.id).where(JobRow.state == "running",
                                                      JobRow.heartbeat_at >= cutoff)).all())

    def requeue_stale_jobs(self, stale_after: timedelta) -> list[str]:
        """Jobs whose worker stopped heart-beating (crashed) go back to the queue, or fail
        once they have used their attempts."""
        cutoff = utcnow() - stale_after
        changed = []
        with self.session() as s:
            rows = s.exec(select(JobRow).where(JobRow.state == "running",
                                               JobRow.heartbeat_at < cutoff)).all()
            for row in rows:
                _requeue_row(s, row, "requeued after a worker crash")
                changed.append(row.id)
        return changed

    def requeue_job(self, job_id: str, note: str) -> str:
        """Put a ``running`` job whose worker is known to be dead back in the queue (or fail
        it once it has used its attempts); returns its state afterwards."""
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"job {job_id!r} does not exist", job=job_id)
            if row.state == "running":
                _requeue_row(s, row, note)
            return row.state


def _requeue_row(s: Session, row: JobRow, note: str) -> None:
    if row.attempts >= row.max_attempts:
        row.state, row.error, row.finished_at = "failed", \
            f"worker lost {row.attempts} times; giving up", utcnow()
        if row.kind == "convert":  # a lost delta job leaves its (ready) version alone
            version = s.get(VersionRow, row.version_id)
            version.status, version.error = "failed", row.error
            s.add(version)
    else:
        row.state, row.progress_note = "queued", note
    s.add(row)
