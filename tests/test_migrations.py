"""Alembic migrations build exactly the schema the table models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from registry import db, tables  # noqa: F401 - registers the tables
from registry.config import Settings


def test_migrations_match_models(tmp_path, db_url):
    settings = Settings.load({"data_dir": tmp_path, "database_url": db_url}, environ={})
    engine = db.make_engine(settings.sqlalchemy_url)
    try:
        db.upgrade(engine)
        db.upgrade(engine)  # idempotent
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    finally:
        engine.dispose()


def test_migration_0008_keeps_old_variants_with_an_unknown_signature(tmp_path):
    from alembic import command
    from sqlalchemy import text

    from registry.store import Store

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.make_engine(url)
    try:
        cfg = db.alembic_config(str(engine.url))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0007")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO models (id, name, description, created_at, created_by) "
                "VALUES (1, 'digits', '', '2026-11-01 00:00:00', 'x')"))
            conn.execute(text(
                "INSERT INTO versions (id, model_id, number, status, source_sha256, source_size, "
                "source_format, source_filename, metadata_json, created_at, created_by, "
                "updated_at) VALUES (1, 1, 1, 'ready', :sha, 1, 'keras', '', '{}', "
                "'2026-11-01 00:00:00', 'x', '2026-11-01 00:00:00')"), {"sha": "a" * 64})
            conn.execute(text(
                "INSERT INTO variants (id, version_id, name, format, sha256, size, target_path, "
                "fidelity, servable, public, created_at) VALUES (1, 1, 'tflite-fp32', 'tflite', "
                ":sha, 1, 'digits/1/tflite-fp32.tflite', '{}', 1, 1, '2026-11-01 00:00:00')"),
                {"sha": "b" * 64})
        db.upgrade(engine)
        store = Store(engine)
        assert store.get_model("digits").max_relative_rmse is None
        assert store.get_version("digits", 1).variants[0].signature is None
        assert store.servable_variants(1)[0]["signature"] is None
    finally:
        engine.dispose()
