"""``modeldrop backup DIR`` / ``modeldrop restore DIR``: the whole registry in one directory.

A backup holds the database (every table, as JSON lines: the same dump restores into SQLite
or PostgreSQL, whichever the backup came from), the TUF metadata (it lives in the database),
every blob (verified by its sha256 on the way out and again on the way in), the signing keys
and the admin-token file, and ``backup.json`` listing what is there with the sha256 of each
file. The database is read in one transaction and the blobs after it, so every blob a row
names is in the backup (blobs are written before their rows). Restore goes into a fresh data
dir and an empty database only; the restored server signs with the same keys, serves the same
TUF repository and the same release counters, so devices notice nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, LargeBinary, TypeDecorator, func, insert, select, text
from sqlmodel import SQLModel

from registry import db
from registry.errors import ModelDropError

__all__ = ["BackupError", "backup", "restore"]

FORMAT = 1


class BackupError(ModelDropError):
    code, status, title = "backup_error", 400, "Backup or restore refused"


def _tables() -> list:
    import registry.tables  # noqa: F401 - registers the tables on SQLModel.metadata

    return list(SQLModel.metadata.sorted_tables)


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    return value


def _decode(value: Any, column) -> Any:
    # Only in columns of those types: a JSON column may hold {"$dt": ...} of a user's own.
    kind = column.type.impl if isinstance(column.type, TypeDecorator) else column.type
    if isinstance(value, dict) and set(value) == {"$b64"} and isinstance(kind, LargeBinary):
        return base64.b64decode(value["$b64"])
    if isinstance(value, dict) and set(value) == {"$dt"} and isinstance(kind, DateTime):
        return datetime.fromisoformat(value["$dt"])
    return value


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backup(services, out: Path) -> dict[str, Any]:
    """Write the registry of ``services`` into the new directory ``out``; returns the summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; back up into a new directory")
    (out / "tables").mkdir(parents=True)
    os.chmod(out, 0o700)  # keys and the admin token go in here
    counts: dict[str, int] = {}
    engine = services.store.engine
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":  # one snapshot of every table
            # (as an execution option: a SET TRANSACTION statement would itself begin the
            # transaction, and the begin() below then refused every PostgreSQL backup)
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            for table in _tables():
                n = 0
                with open(out / "tables" / f"{table.name}.jsonl", "w", encoding="utf-8") as f:
                    for row in conn.execute(select(table).order_by(*table.primary_key.columns)):
                        f.write(json.dumps({k: _encode(v) for k, v in row._mapping.items()},
                                           sort_keys=True) + "\n")
                        n += 1
                counts[table.name] = n
    blobs_dir = out / "blobs"
    blobs_dir.mkdir()
    shas = sorted(services.blobs.iter_sha256())
    for sha in shas:
        services.blobs.copy_to(sha, blobs_dir / sha)  # digest-verified
    keys = Path(services.settings.resolved_keys_dir)
    if keys.exists():
        shutil.copytree(keys, out / "keys", symlinks=False)
    token = Path(services.settings.data_dir) / "admin-token"
    if token.exists():
        shutil.copy2(token, out / "admin-token")
    files = {str(p.relative_to(out)): _sha256_file(p)
             for p in sorted(out.rglob("*")) if p.is_file()}
    summary = {"format": FORMAT, "database": engine.dialect.name, "tables": counts,
               "blobs": len(shas), "files": files}
    (out / "backup.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


def restore(settings, src: Path) -> dict[str, Any]:
    """Restore the backup in ``src`` into ``settings``' data dir and database, both fresh.

    Raises:
        BackupError: not a backup, a file that does not match ``backup.json``, a data dir
            that already has keys, or a database that already has a registry in it.
    """
    from registry.blobs import blob_store_from_settings

    src = Path(src)
    try:
        summary = json.loads((src / "backup.json").read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{src} is not a modeldrop backup (no readable backup.json)") from e
    if summary.get("format") != FORMAT:
        raise BackupError(f"backup format {summary.get('format')!r} is not {FORMAT}")
    for rel, sha in summary["files"].items():
        if _sha256_file(src / rel) != sha:
            raise BackupError(f"{rel} in the backup does not match backup.json: damaged")
    data_dir = Path(settings.data_dir)
    keys = Path(settings.resolved_keys_dir)
    if keys.exists() and any(keys.iterdir()):
        raise BackupError(f"{keys} already holds keys; restore into a fresh data dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    engine = db.make_engine(settings.sqlalchemy_url)
    try:
        db.upgrade(engine)
        tables = _tables()
        with engine.begin() as conn:
            for table in tables:
                if conn.execute(select(func.count()).select_from(table)).scalar_one():
                    raise BackupError(f"the database already has rows in {table.name}; restore "
                                      "into an empty database")
            for table in tables:
                path = src / "tables" / f"{table.name}.jsonl"
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] \
                    if path.exists() else []
                cols = table.columns
                for start in range(0, len(rows), 500):
                    conn.execute(insert(table), [{k: _decode(v, cols[k]) for k, v in r.items() if k in cols}
                                                 for r in rows[start:start + 500]])
            if engine.dialect.name == "postgresql":  # ids were inserted: move the sequences on
                for table in tables:
                    for col in table.primary_key.columns:
                        if col.autoincrement is True or (col.autoincrement == "auto" and
                                                         col.type.python_type is int):
                            conn.execute(text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col.name}'), "
                                f"COALESCE((SELECT max({col.name}) FROM {table.name}), 0) + 1, false)"))
    finally:
        engine.dispose()
    if (src / "keys").exists():
        shutil.copytree(src / "keys", keys, dirs_exist_ok=True)
    if (src / "admin-token").exists():
        shutil.copy2(src / "admin-token", data_dir / "admin-token")
    blobs = blob_store_from_settings(settings)
    for path in sorted((src / "blobs").iterdir()):
        info = blobs.put_file(path)
        if info.sha256 != path.name:
            raise BackupError(f"blob {path.name} hashes to {info.sha256}")
    return summary
