"""The `modeldrop` CLI against a real server on 127.0.0.1 (click's CliRunner)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from registry.cli import main


def test_push_versions_show(cli, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"k" * 300_000)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"accuracy": {"top1": 0.71}, "latency_ms": {"pixel7": 6.0},
                                "labels": ["a", "b"], "description": "test model"}))
    pushed = cli("push", "digits", str(model), "--metadata", str(meta))
    assert "digits version 1" in pushed.output
    assert "upload" in pushed.output  # the progress bar
    listing = cli("versions", "digits").output
    assert "VERSION" in listing and "top1=0.71" in listing and "293.0 KiB" in listing
    shown = cli("show", "digits", "1").output
    assert "test model" in shown and "pixel7" in shown
    as_json = json.loads(cli("show", "digits", "1", "--json").output)
    assert as_json["metadata"]["accuracy"] == {"top1": 0.71}
    assert "digits" in cli("models").output


def test_token_create_and_roles(cli, tmp_path):
    created = cli("token", "create", "--role", "publisher", "--name", "ci")
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("mdt_")
    model = tmp_path / "m.h5"
    model.write_bytes(b"h5 bytes")
    cli("push", "digits", str(model), token=token)
    denied = cli("token", "create", "--role", "admin", token=token, ok=False)
    assert denied.exit_code != 0 and "forbidden" in denied.output
    listed = cli("token", "list").output
    assert "publisher" in listed and token not in listed
    assert "version.create" in cli("audit").output


def test_audit_hides_system_rows_unless_all_and_filters_by_actor(cli, live_server, tmp_path):
    model = tmp_path / "m.h5"
    model.write_bytes(b"h5 bytes")
    token = cli("token", "create", "--role", "publisher", "--name", "ci").stdout.split()[0]
    cli("push", "digits", str(model), token=token)
    live_server.services.store.audit("system", "delta.create", "delta:a->b")
    default = cli("audit").output
    assert "version.create" in default and "delta.create" not in default, default
    assert "delta.create" in cli("audit", "--all").output
    assert "delta.create" in cli("audit", "--actor", "system").output
    mine = cli("audit", "--actor", "ci").output
    assert "version.create" in mine and "token.create" not in mine, mine
    assert "--all shows them" in cli("audit", "--actor", "nobody").output


def test_clear_errors(cli, tmp_path):
    missing = cli("show", "nope", "1", ok=False)
    assert missing.exit_code != 0 and "model_not_found" in missing.output
    bad = tmp_path / "meta.json"
    bad.write_text("{not json")
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    result = cli("push", "digits", str(model), "--metadata", str(bad), ok=False)
    assert result.exit_code != 0 and "not valid JSON" in result.output
    wrong = cli("push", "digits", str(model), token="mdt_wrong", ok=False)
    assert "unauthenticated" in wrong.output and "MODELDROP_TOKEN" in wrong.output


def test_unreachable_server_is_a_clean_error():
    runner = CliRunner()
    result = runner.invoke(main, ["--url", "http://127.0.0.1:9", "models"])
    assert result.exit_code != 0
    assert "cannot reach" in result.output and "Traceback" not in result.output
