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
