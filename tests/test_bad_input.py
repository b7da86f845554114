"""No 5xx on bad input (issue 13): hostile JSON, integers past 64 bits, nulls, NaN, a full disk,
and a write whose audit row fails. Each case was a 500 (or a silent null) before the fix."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from sqlalchemy import text

from tests.helpers import assert_problem, base_settings
from tests.makers import make_ready_version, telemetry_event

DEEP = "[" * 10_000 + "]" * 10_000
BIG = 4547049618742040196216136825057574912  # > 2^63, from the fuzzing run


def _audit_count(services) -> int:
    with services.store.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()


def _json(api, method, url, raw: str):
    return getattr(api, method)(url, data=raw, content_type="application/json")


# -- depth and size caps, before parsing --------------------------------------------------------

@pytest.mark.parametrize(("method", "url"), [
    ("patch", "/v1/models/m"),
    ("patch", "/v1/models/m/versions/1"),
    ("post", "/v1/models/m/releases"),
    ("patch", "/v1/models/m/channels/prod"),
    ("post", "/v1/experiments"),
])
def test_a_10000_deep_body_is_a_400_and_stores_nothing(api, services, method, url):
    make_ready_version(services, "m")
    before = _audit_count(services)
    body = assert_problem(_json(api, method, url, f'{{"description": {DEEP}}}'), 400, "validation_error")
    assert "nested deeper" in body["detail"]
    assert _audit_count(services) == before


def test_deep_metadata_on_upload_is_refused_and_creates_no_version(api, services):
    # 900 deep parsed, was stored, and broke every later read of the version list and audit log.
    for depth in (900, 10_000):
        metadata = '{"extra": {"a": %s}}' % ("[" * depth + "]" * depth)
        body = assert_problem(api.upload("deep", metadata=metadata), 400, "invalid_metadata")
        assert body["field"] == "metadata"
    assert_problem(api.get("/v1/models/deep"), 404, "model_not_found")
    assert api.get("/v1/models").status_code == 200


def test_deep_telemetry_and_token_bodies_are_400(app, admin_api, anon_api):
    assert_problem(_json(anon_api, "post", "/v1/telemetry", DEEP), 400, "validation_error")
    assert_problem(_json(admin_api, "post", "/v1/tokens", f'{{"name": {DEEP}}}'), 400, "validation_error")
    assert_problem(_json(admin_api, "post", "/v1/keys/rotate", f'{{"role": {DEEP}}}'), 400,
                   "validation_error")


def test_a_body_over_the_json_limit_is_413_unread(tmp_path):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, max_json_bytes=1000))
    services = app.extensions["modeldrop"]
    token = services.store.create_token("publisher", "t").token
    make_ready_version(services, "m")
    resp = app.test_client().patch("/v1/models/m", data=json.dumps({"description": "x" * 2000}),
                                   content_type="application/json",
                                   headers={"Authorization": f"Bearer {token}"})
    assert_problem(resp, 413, "body_too_large")
    assert services.store.get_model("m").description == ""


def test_nesting_within_the_limit_and_brackets_inside_strings_pass(api, services):
    make_ready_version(services, "m")
    desc = "[" * 5000 + "{" * 5000  # brackets in a string are not nesting
    assert _json(api, "patch", "/v1/models/m", json.dumps({"description": desc})).status_code == 200
    extra = {"a": [[[[[[[[[[1]]]]]]]]]]}
    resp = _json(api, "patch", "/v1/models/m/versions/1", json.dumps({"extra": extra}))
    assert resp.status_code == 200, resp.get_data(as_text=True)


# -- integers outside 64 bits --------------------------------------------------------------------

def test_path_integers_past_64_bits_are_404(api, admin_api, services):
    make_ready_version(services, "m")
    for url in (f"/v1/models/m/versions/{BIG}", f"/v1/models/m/versions/{2**63}",
                f"/v1/models/m/versions/{BIG}/latency"):
        assert api.get(url).status_code == 404, url
    assert api.patch(f"/v1/models/m/versions/{BIG}", json={"tags": ["a"]}).status_code == 404
    assert admin_api.delete(f"/v1/tokens/{BIG}").status_code == 404
    assert api.get(f"/dashboard/models/m/versions/{BIG}").status_code in (302, 401, 404)
    assert api.get(f"/v1/models/m/versions/{2**63 - 1}").status_code == 404  # in range: no such version


def test_cursors_and_form_numbers_past_64_bits_are_400(api, admin_api, services):
    make_ready_version(services, "m")
    for cursor in (str(BIG), "\u00b2", "\u0663", "-1"):
        body = assert_problem(api.get("/v1/models/m/versions", query_string={"cursor": cursor}), 400,
                              "validation_error")
        assert body["field"] == "cursor"
    for limit in ("9" * 5000, "\u00b2"):
        body = assert_problem(admin_api.get("/v1/audit", query_string={"limit": limit}), 400,
                              "validation_error")
        assert body["field"] == "limit"
    for number in (str(BIG), "\u00b2", "9" * 5000):
        body = assert_problem(api.upload("m2", version=number), 400, "validation_error")
        assert body["field"] == "version"


def test_json_integers_past_64_bits_are_400_naming_the_field(api, services):
    make_ready_version(services, "m")
    body = assert_problem(api.post("/v1/models/m/releases", json={"version": BIG, "channel": "prod"}),
                          400, "validation_error")
    assert body["field"] == "version"
    body = assert_problem(api.upload("m", metadata='{"extra": {"n": %s}}' % ("9" * 5000)), 400,
                          "invalid_metadata")
    assert body["field"] == "extra.n"
    body = assert_problem(_json(api, "post", "/v1/models/m/channels/prod/rollback",
                                f'{{"to_version": -{BIG}}}'), 400, "validation_error")
    assert body["field"] == "to_version"


# -- nulls and NaN -----------------------------------------------------------------------------

def test_null_description_is_400_not_a_constraint_failure(api, services):
    make_ready_version(services, "m")
    body = assert_problem(api.patch("/v1/models/m", json={"description": None}), 400, "validation_error")
    assert body["field"] == "description"
    assert services.store.get_model("m").description == ""


WRITE_BODIES = [
    ("patch", "/v1/models/m", {"description": "d", "accuracy_drop_threshold_pp": 1.0}),
    ("patch", "/v1/models/m/versions/1", {"description": "d", "tags": ["a"], "labels": ["b"],
                                           "accuracy": {"top1": 0.5}, "latency_ms": {"p": 1.0},
                                           "min_app_version": "1.0", "extra": {}}),
    ("post", "/v1/models/m/releases", {"version": 1, "channel": "prod", "rollout_percent": 50,
                                        "variant": "tflite-fp32", "targeting": {}, "guardrails": {},
                                        "reason": "r"}),
    ("patch", "/v1/models/m/channels/prod", {"rollout_percent": 10, "paused": False, "reason": "r"}),
    ("post", "/v1/models/m/channels/prod/rollback", {"to_version": 1, "reason": "r"}),
    ("post", "/v1/experiments", {"name": "e", "model": "m", "channel": "prod", "arms": {"a": 1},
                                 "weights": {"a": 1}, "coverage_percent": 10, "seed": "s",
                                 "targeting": {}, "guardrails": {}}),
    ("patch", "/v1/experiments/e", {"coverage_percent": 5, "paused": True, "reason": "r"}),
    ("post", "/v1/experiments/e/stop", {"winner": "a", "reason": "r"}),
    ("post", "/v1/tokens", {"role": "reader", "name": "n"}),
    ("post", "/v1/keys/rotate", {"role": "timestamp"}),
]


@pytest.mark.parametrize(("method", "url", "fields"), WRITE_BODIES, ids=[f"{m} {u}" for m, u, _ in WRITE_BODIES])
def test_null_and_nan_in_any_field_is_never_a_5xx(admin_api, services, method, url, fields):
    make_ready_version(services, "m")
    for name in fields:
        for bad in ("null", "NaN", "Infinity", "-Infinity", "1e999", str(BIG), '"NaN"'):
            raw = json.dumps({**fields, name: "@"}).replace('"@"', bad)
            resp = _json(admin_api, method, url, raw)
            assert resp.status_code < 500, (name, bad, resp.get_data(as_text=True))
            if bad not in ("null", '"NaN"'):
                body = assert_problem(resp, 400, resp.get_json()["code"])
                assert body["field"].split(".")[0] == name, body


def test_nan_in_metadata_is_400_naming_the_field_and_stores_nothing(api, services):
    for raw in ('{"accuracy": {"top1": NaN}}', '{"accuracy": {"top1": Infinity}}',
                '{"accuracy": {"top1": "NaN"}}', '{"latency_ms": {"pixel7": 1e999}}'):
        body = assert_problem(api.upload("nan", metadata=raw), 400, "invalid_metadata")
        assert body["field"] in ("accuracy.top1", "latency_ms.pixel7"), body
    assert_problem(api.get("/v1/models/nan"), 404, "model_not_found")
    make_ready_version(services, "m")
    body = assert_problem(_json(api, "patch", "/v1/models/m/versions/1", '{"accuracy": {"top1": NaN}}'),
                          400, "validation_error")
    assert body["field"] == "accuracy.top1"
    assert not services.store.get_version("m", 1).metadata.get("accuracy")


def test_nan_in_telemetry_is_400_naming_the_event_field(anon_api):
    raw = json.dumps({"events": [telemetry_event(latency_ms="@")]}).replace('"@"', "NaN")
    body = assert_problem(_json(anon_api, "post", "/v1/telemetry", raw), 400, "validation_error")
    assert body["field"] == "events.0.latency_ms"


# -- the write and its audit row commit together -------------------------------------------------

@pytest.fixture
def audit_refused(services):
    """Call it to make every audit insert fail for real (an SQLite trigger)."""
    def refuse() -> None:
        with services.store.engine.begin() as conn:
            conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                              "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"))

    yield refuse
    with services.store.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER no_audit"))


def test_key_rotation_is_undone_when_its_audit_row_fails(app, admin_api, services, audit_refused):
    root_before = admin_api.get("/v1/trusted-root").get_json()["signed"]["version"]
    keys_before = sorted(p.name for p in services.signing._keys._dir.rglob("*") if p.is_file())
    audit_refused()
    resp = admin_api.post("/v1/keys/rotate", json={"role": "timestamp"})
    assert resp.status_code == 500
    assert admin_api.get("/v1/trusted-root").get_json()["signed"]["version"] == root_before
    assert services.store.get_tuf_metadata(f"{root_before + 1}.root.json") is None
    # The old key is still the active one: the new one waits as pending, unpublished.
    active = sorted(p.name for p in services.signing._keys._dir.rglob("*") if p.is_file()
                    if ".next." not in p.name)
    assert active == [n for n in keys_before if ".next." not in n]


def test_key_rotation_and_its_audit_row_land_together(app, admin_api, services):
    root_before = admin_api.get("/v1/trusted-root").get_json()["signed"]["version"]
    resp = admin_api.post("/v1/keys/rotate", json={"role": "timestamp"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert admin_api.get("/v1/trusted-root").get_json()["signed"]["version"] == root_before + 1
    rows = services.store.audit_log(10, "keys.rotate")
    assert [r.details["result"] for r in rows] == [resp.get_json()["result"]]


def test_a_model_patch_is_undone_when_its_audit_row_fails(api, services, audit_refused):
    make_ready_version(services, "m")
    audit_refused()
    assert api.patch("/v1/models/m", json={"description": "new"}).status_code == 500
    assert services.store.get_model("m").description == ""


# -- a full disk or database is a 503 storage_full ----------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs for the data dir: a real ENOSPC / SQLITE_FULL (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory, keep: int = 0) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    if keep:
        os.truncate(directory / "filler", os.path.getsize(directory / "filler") - keep)


def test_a_full_disk_is_503_storage_full_and_leaves_no_staging_file(small_disk, tmp_path):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, data_dir=small_disk / "data"))
    services = app.extensions["modeldrop"]
    token = services.store.create_token("publisher", "t").token
    from tests.helpers import ApiClient

    api = ApiClient(app.test_client(), token)
    _fill(small_disk, keep=256 << 10)  # 256 KiB left; the upload is 1 MiB
    body = assert_problem(api.upload("full", content=b"x" * (1 << 20)), 503, "storage_full")
    assert "full" in body["detail"]
    assert list(services.blobs.staging_dir.iterdir()) == []
    (small_disk / "filler").unlink()
    assert api.upload("full", content=b"x" * (1 << 20)).status_code == 201
    app.extensions["modeldrop"].store.engine.dispose()


def test_a_full_database_is_503_storage_full_and_changes_nothing(small_disk, tmp_path):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, data_dir=small_disk / "data"))
    services = app.extensions["modeldrop"]
    token = services.store.create_token("publisher", "t").token
    make_ready_version(services, "m")
    from tests.helpers import ApiClient

    api = ApiClient(app.test_client(), token)
    _fill(small_disk)
    assert_problem(api.patch("/v1/models/m", json={"description": "y" * 9000}), 503, "storage_full")
    (small_disk / "filler").unlink()
    assert services.store.get_model("m").description == ""
    app.extensions["modeldrop"].store.engine.dispose()
