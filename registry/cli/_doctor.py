"""`modeldrop doctor`: is this deployment able to do its job? One line per check, with a fix.

Unlike the other commands it looks at the server's own data dir and configuration (run it
where the server runs, with the same ``MODELDROP_*`` environment), because what breaks a
deployment is mostly local: a database nobody migrated, a blob store that is not writable,
keys other users can read, no sandbox, workers that take no jobs, a full disk. It asks the server over HTTP only for
what the server publishes (health, TUF timestamp expiry). It never creates anything: a
missing database is reported, not made.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
import requests

__all__ = ["Check", "register", "run_checks"]

KEY_FILES = ("root.pem", "targets.pem", "snapshot.pem", "timestamp.pem", "manifest.pem")
TIMESTAMP_MARGIN = 3600  # seconds: less left than this means re-signing is not happening
DISK_WARN = 2 << 30  # bytes free below which conversions may run out of work space
DISK_FAIL = 512 << 20  # bytes


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def register(main: click.Group) -> None:
    main.add_command(doctor)


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MODELDROP_DATA_DIR",
              default=Path("./modeldrop-data"), show_default=True,
              help="The server's data dir (env MODELDROP_DATA_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def doctor(ctx: click.Context, data_dir: Path, as_json: bool) -> None:
    """Check a deployment: database, blob store, keys, sandbox, disk, server, workers, TUF expiry.

    Exits 1 when a check fails (warnings alone exit 0).
    """
    from registry.config import Settings

    settings = Settings.load({"data_dir": data_dir.resolve()})
    url = (ctx.find_root().obj or {}).get("url") or "http://127.0.0.1:8080"
    checks = run_checks(settings, url)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            line = f"{c.status.upper():<4}  {c.name:<10} {c.detail}"
            click.echo(line + (f"  -> fix: {c.fix}" if c.fix and c.status != "ok" else ""))
    if any(c.status == "fail" for c in checks):
        ctx.exit(1)


def run_checks(settings, url: str) -> list[Check]:
    """Every check, in the order a deployment depends on them; none raises."""
    health: dict = {}  # the server's /healthz answer, read once (by the server check)
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("database", lambda: _database(settings)),
        ("blobs", lambda: _blobs(settings)),
        ("keys", lambda: _keys(settings)),
        ("sandbox", lambda: _sandbox(settings)),
        ("disk", lambda: _disk(settings)),
        ("server", lambda: _server(url, health)),
        ("workers", lambda: _workers(settings, health.get("body"))),
        ("tuf", lambda: _timestamp(url)),
    ]
    checks: list[Check] = []
    for name, step in steps:
        done = {c.name: c.status for c in checks}
        if name == "tuf" and done["server"] == "fail":
            checks.append(Check("tuf", "warn", "not checked: the server did not answer"))
            continue
        if name == "workers" and done["database"] == "fail":
            checks.append(Check("workers", "warn", "not checked: the database is not usable"))
            continue
        try:
            checks.append(step())
        except Exception as e:  # noqa: BLE001 - a check that breaks is a finding, not a crash
            checks.append(Check(name, "fail", f"{type(e).__name__}: {e}",
                                "see the message; docs/deployment.md"))
    return checks


def _database(settings) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from registry.db import alembic_config, make_engine

    url = settings.sqlalchemy_url
    shown = url.split("@")[-1] if "@" in url else url  # never print a password
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            return Check("database", "fail", f"no database at {path}",
                         "start the server once (modeldrop serve) to create and migrate it")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as e:  # noqa: BLE001 - a check that cannot run is its finding
        return Check("database", "fail", f"cannot connect to {shown}: {type(e).__name__}",
                     "check MODELDROP_DATABASE_URL and that the database server runs")
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        return Check("database", "fail", f"{shown} is at revision {current or 'none'}, "
                     f"code expects {head}",
                     "restart the server (it migrates at start) or run alembic upgrade head")
    return Check("database", "ok", f"{shown} reachable, migrated (revision {head})")


def _blobs(settings) -> Check:
    from registry.blobs import blob_store_from_settings

    if settings.blob_backend == "local" and not Path(settings.data_dir).is_dir():
        return Check("blobs", "fail", f"no data dir at {settings.data_dir}",
                     "start the server once (modeldrop serve), or pass --data-dir")
    store = blob_store_from_settings(settings)
    probe = f"modeldrop doctor probe {uuid.uuid4()}".encode()
    try:
        info = store.put_bytes(probe)
        store.delete(info.sha256)
    except Exception as e:  # noqa: BLE001 - a check that cannot run is its finding
        where = settings.s3_bucket if settings.blob_backend == "s3" else settings.data_dir
        return Check("blobs", "fail", f"{settings.blob_backend} store not writable: "
                     f"{type(e).__name__}: {e}",
                     f"make {where} writable by the server's user (docs/storage.md)")
    return Check("blobs", "ok", f"{settings.blob_backend} store writable")


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def _keys(settings) -> Check:
    keys_dir = Path(settings.resolved_keys_dir)
    if not keys_dir.is_dir():
        return Check("keys", "fail", f"no keys in {keys_dir}",
                     "start the server once (modeldrop serve) to generate them")
    missing = [name for name in KEY_FILES if not (keys_dir / name).exists()]
    if missing:
        return Check("keys", "fail", f"{keys_dir} lacks {', '.join(missing)}",
                     "restore them from backup; a lost root key needs a new repository "
                     "(docs/security.md)")
    open_to_others = [p for p in [keys_dir, *keys_dir.rglob("*")] if not _private(p)]
    if open_to_others:
        shown = ", ".join(f"{p} ({stat.S_IMODE(p.stat().st_mode):04o})" for p in open_to_others[:3])
        return Check("keys", "fail", f"readable by other users: {shown}",
                     f"chmod -R go-rwx {keys_dir}")
    foreign = [p for p in [keys_dir, *keys_dir.iterdir()] if p.stat().st_uid != os.getuid()]
    if foreign:
        return Check("keys", "warn", f"{foreign[0]} belongs to another user (uid "
                     f"{foreign[0].stat().st_uid})",
                     "run doctor as the server's user, or chown the keys to it")
    return Check("keys", "ok", f"{len(KEY_FILES)} keys in {keys_dir}, private (0700/0600)")


def _sandbox(settings) -> Check:
    from registry.jobs.sandbox import Sandbox

    status = Sandbox(settings).status()
    if status.state == "full":
        return Check("sandbox", "ok", f"converter sandbox full ({len(status.layers)} layers)")
    level = "fail" if settings.convert_sandbox == "required" else "warn"
    return Check("sandbox", level, f"converter sandbox {status.state}: {status.reason}",
                 "bash scripts/install-sandbox.sh (bubblewrap), see docs/security.md")


def _disk(settings) -> Check:
    where = Path(settings.data_dir)
    probe = where if where.exists() else where.parent
    free = shutil.disk_usage(probe).free
    shown = f"{free / (1 << 30):.1f} GiB free under {probe}"
    if free < DISK_FAIL:
        return Check("disk", "fail", shown, "free space or move the data dir (conversions "
                     "unpack models into it)")
    if free < DISK_WARN:
        return Check("disk", "warn", shown, "free space before large models arrive")
    return Check("disk", "ok", shown)


def _server(url: str, health: dict | None = None) -> Check:
    """``health`` (when given) receives the answer's body, for the workers check."""
    try:
        resp = requests.get(f"{url.rstrip('/')}/healthz", timeout=10)
        body = resp.json()  # a 503 (no live worker) has a body too
    except (requests.RequestException, ValueError) as e:
        return Check("server", "fail", f"no answer from {url}/healthz ({type(e).__name__})",
                     "start it (modeldrop serve) or pass --url / MODELDROP_URL")
    if health is not None and isinstance(body, dict):
        health["body"] = body
    return Check("server", "ok" if body.get("status") == "ok" else "warn",
                 f"{url} {body.get('status')}: database {body.get('database')}, blobs "
                 f"{body.get('blob_backend')}, jobs {body.get('job_backend')}, sandbox "
                 f"{body.get('sandbox')}", "see the server's log")


def _workers(settings, health: dict | None = None, now: datetime | None = None) -> Check:
    """Whether workers take jobs: the server's /healthz says how many workers are alive (the
    ones ``modeldrop serve`` supervises, or the Celery workers that answer a ping) and the jobs
    table, where every job backend records its jobs, says how long the oldest job has waited.
    A job waits too long past ``MODELDROP_JOB_STALE_AFTER``, the setting the server uses."""
    from registry.db import make_engine
    from registry.jobs.worker import stale_after
    from registry.store import Store

    limit = stale_after(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        queue = Store(engine, lock_dir=Path(settings.data_dir)).job_queue(limit)
    finally:
        engine.dispose()
    start = ("restart the server (modeldrop serve or gunicorn; its workers run in-process, "
             "MODELDROP_WORKER_PROCESSES)" if settings.job_backend == "inprocess" else
             "start workers: celery -A registry.jobs.celery_app worker -Q modeldrop "
             "(docs/deployment.md)")
    shown = f"{settings.job_backend} backend: {queue.queued} queued, {queue.running} running"
    live = (health or {}).get("workers")
    if isinstance(live, dict):
        if live.get("alive") is None:
            shown += f"; the server cannot count its workers ({live.get('error', 'no answer')})"
        else:
            shown += f", {live['alive']}" + (f" of {live['expected']}" if "expected" in live
                                            else "") + " worker(s) alive"
            if "restarts" in live:
                shown += f" ({live['restarts']} restarts)"
    if (health or {}).get("status") == "no_workers" or (isinstance(live, dict)
                                                        and live.get("alive") == 0):
        level = "fail" if settings.job_backend == "inprocess" or queue.queued else "warn"
        return Check("workers", level, f"{shown}: no live worker takes jobs",
                     "see the server's log: its workers die at start (a restart follows each "
                     "death, with a growing delay)" if settings.job_backend == "inprocess"
                     else start)
    limit_s = f"{limit.total_seconds():.0f} s (MODELDROP_JOB_STALE_AFTER)"
    if queue.stale_running:
        return Check("workers", "warn", f"{shown}; {queue.stale_running} running job(s) stopped "
                     f"heart-beating over {limit_s} ago (a worker died)",
                     f"a live worker requeues them; if none does, {start}")
    if queue.oldest_queued_at is not None:
        oldest = queue.oldest_queued_at
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        waited = ((now or datetime.now(UTC)) - oldest).total_seconds()
        if waited > limit.total_seconds():
            level = "warn" if queue.running else "fail"
            why = ("the workers are busy" if queue.running else "no worker is taking jobs")
            return Check("workers", level, f"{shown}; the oldest queued job has waited "
                         f"{waited:.0f} s, over {limit_s}: {why}",
                         start if not queue.running else
                         "raise MODELDROP_WORKER_PROCESSES or add workers")
    return Check("workers", "ok", f"{shown}; no job waits longer than {limit_s}")


def _timestamp(url: str, now: datetime | None = None) -> Check:
    try:
        resp = requests.get(f"{url.rstrip('/')}/tuf/metadata/timestamp.json", timeout=10)
        expires = resp.json()["signed"]["expires"]
    except (requests.RequestException, ValueError, KeyError) as e:
        return Check("tuf", "fail", f"no TUF timestamp from {url} ({type(e).__name__})",
                     "start the server; it publishes TUF metadata at start")
    when = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    left = (when - (now or datetime.now(UTC))).total_seconds()
    if left <= 0:
        return Check("tuf", "fail", f"timestamp.json expired at {expires}: devices refuse updates",
                     "keep the server (or a worker) running: it re-signs the timestamp")
    if left < TIMESTAMP_MARGIN:
        return Check("tuf", "warn", f"timestamp.json expires in {left / 60:.0f} min ({expires})",
                     "check that the server's periodic re-signing runs (its log)")
    return Check("tuf", "ok", f"timestamp.json valid for {left / 3600:.1f} h (until {expires})")
