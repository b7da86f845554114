"""Shared fixtures: an isolated registry per test on SQLite or PostgreSQL, local or S3 blobs."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import ApiClient, base_settings

# Fixture modules: live_server (real HTTP on loopback), and the SDK's stand-in origin with
# its real .tflite models.
pytest_plugins = ["tests.live", "tests.sdk_origin"]

PG_ADMIN_URL = os.environ.get("MODELDROP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def pg_server():
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL is not running")
    return PG_ADMIN_URL


@pytest.fixture
def pg_database(pg_server):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = "md_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_server.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    from tests.seaweed import start_seaweedfs

    with start_seaweedfs(tmp_path_factory.mktemp("seaweed")) as endpoint:
        yield endpoint


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Parametrises a test over both databases."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("pg_database")


@pytest.fixture(params=["local", "s3"])
def blob_settings(request):
    """Parametrises a test over both blob backends."""
    if request.param == "local":
        return {"blob_backend": "local"}
    endpoint = request.getfixturevalue("seaweedfs")
    return {"blob_backend": "s3", "s3_endpoint_url": endpoint,
            "s3_bucket": "md-" + uuid.uuid4().hex[:10], "s3_access_key": "any",
            "s3_secret_key": "any"}


@pytest.fixture
def settings(tmp_path):
    return base_settings(tmp_path)


@pytest.fixture
def app(settings):
    from registry.app import create_app

    app = create_app(settings)
    yield app
    app.extensions["modeldrop"].store.engine.dispose()


@pytest.fixture
def services(app):
    return app.extensions["modeldrop"]


@pytest.fixture
def admin_token(app):
    return (Path(app.extensions["modeldrop"].settings.data_dir) / "admin-token").read_text().strip()


@pytest.fixture
def publisher_token(services):
    return services.store.create_token("publisher", "tests").token


@pytest.fixture
def reader_token(services):
    return services.store.create_token("reader", "tests").token


@pytest.fixture
def api(app, publisher_token):
    return ApiClient(app.test_client(), publisher_token)


@pytest.fixture
def admin_api(app, admin_token):
    return ApiClient(app.test_client(), admin_token)


@pytest.fixture
def anon_api(app):
    return ApiClient(app.test_client(), None)
