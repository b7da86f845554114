"""`modeldrop token / keys / audit`."""

from __future__ import annotations

from pathlib import Path

import click

from registry.cli._common import client, echo_json, pass_ctx, table
from registry.errors import ModelDropError


def register(main: click.Group) -> None:
    main.add_command(token)
    main.add_command(keys)
    main.add_command(audit)
    main.add_command(fsck)
    main.add_command(backup_cmd)
    main.add_command(restore_cmd)


@click.group()
def token() -> None:
    """Manage API tokens (admin)."""


@token.command("create")
@click.option("--role", type=click.Choice(["reader", "publisher", "admin"]), required=True,
              help="What the token may do.")
@click.option("--name", default="", help="A label to recognise the token by.")
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None,
              help="Offline, on the server's machine: write the token straight into the "
                   "registry in this data dir (its database from MODELDROP_DATABASE_URL if "
                   "set), without the server or any token. The way back in when no admin "
                   "token is left.")
@pass_ctx
def token_create(ctx, role, name, data_dir) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    if data_dir is not None:
        created = _create_offline(data_dir, role, name)
    else:
        created = client(ctx).post("/v1/tokens", {"role": role, "name": name})
    click.echo(created["token"])
    click.echo(f"(token {created['id']}, role {created['role']}; store it now, it is not shown again)",
               err=True)


def _create_offline(data_dir: Path, role: str, name: str) -> dict:
    # Like `serve`, this runs on the server's machine with its files: it opens the database
    # itself (the one place the CLI does), so it needs neither the server nor a token.
    from registry import db
    from registry.config import Settings
    from registry.store import Store

    settings = Settings.load({"data_dir": data_dir.resolve()})
    engine = db.make_engine(settings.sqlalchemy_url)
    try:
        db.upgrade(engine)
        made = Store(engine).create_token(role, name or f"offline-{role}", created_by="cli:offline")
    finally:
        engine.dispose()
    return made.model_dump(mode="json")


@token.command("list")
@pass_ctx
def token_list(ctx) -> None:
    """List tokens (never their secrets)."""
    items = client(ctx).get("/v1/tokens")["items"]
    click.echo(table(["ID", "NAME", "ROLE", "PREFIX", "CREATED", "REVOKED"],
                     [(t["id"], t["name"], t["role"], t["prefix"] + "…", t["created_at"][:19],
                       "yes" if t["revoked"] else "") for t in items]))


@token.command("revoke")
@click.argument("token_id", type=int)
@pass_ctx
def token_revoke(ctx, token_id) -> None:
    """Revoke token TOKEN_ID."""
    client(ctx).request("DELETE", f"/v1/tokens/{token_id}")
    click.echo(f"revoked token {token_id}")


@click.group()
def keys() -> None:
    """Signing keys (admin)."""


@keys.command("rotate")
@click.option("--role", type=click.Choice(["root", "targets", "snapshot", "timestamp", "manifest"]),
              required=True, help="Which role's key to replace.")
@pass_ctx
def keys_rotate(ctx, role) -> None:
    """Rotate a key: publishes a new root signed by the old and the new keys."""
    result = client(ctx).post("/v1/keys/rotate", {"role": role})
    click.echo(f"rotated the {role} key: {result.get('result')}")


@click.command()
@click.option("--limit", default=50, show_default=True, help="How many entries.")
@click.option("--action", default=None, help="Only this action, e.g. version.update.")
@click.option("--actor", default=None, help="Only entries by this actor (a token's name, e.g. ci).")
@click.option("--all", "show_all", is_flag=True,
              help="Include the server's own entries (actor system…: deltas, variant publication, "
                   "guardrail halts), hidden by default.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def audit(ctx, limit, action, actor, show_all, as_json) -> None:
    """Show the audit log, newest first (admin); people's entries unless --all."""
    # Asking for a system actor by name shows it: --actor system:guardrails needs no --all.
    system = show_all or bool(actor and actor.split(":")[0] == "system")
    data = client(ctx).get("/v1/audit", limit=limit, action=action, actor=actor,
                           system="true" if system else "false")
    if as_json:
        return echo_json(data)
    if not data["items"]:
        click.echo("no audit entries" + ("" if system else " (the server's own are hidden; --all shows them)"))
        return None
    click.echo(table(["WHEN", "WHO", "ACTION", "TARGET"],
                     [(a["ts"][:19], a["actor"], a["action"], a["target"]) for a in data["items"]]))
    return None


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              envvar="MODELDROP_DATA_DIR", required=True,
              help="The server's data dir (with its settings from MODELDROP_*: the database, "
                   "the blob backend). Run on the server's machine.")
@click.option("--repair", is_flag=True, help="Fix what is found (see docs/cli.md for what each fix is).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def fsck(data_dir: Path, repair: bool, as_json: bool) -> None:
    """Check the database, blob store and TUF repository against each other (offline)."""
    from registry.config import Settings
    from registry.fsck import fsck as run_fsck
    from registry.services import build_services

    services = build_services(Settings.load({"data_dir": data_dir.resolve()}))
    try:
        findings = run_fsck(services, repair=repair)
    finally:
        services.store.engine.dispose()
    if as_json:
        echo_json({"findings": [f.to_dict() for f in findings], "repaired": repair})
    else:
        for f in findings:
            mark = "repaired" if f.repaired else ("found" if not repair else "left")
            click.echo(f"{f.kind:20} {f.subject}  {f.detail}  [{mark}]")
        click.echo(f"{len(findings)} finding(s)" + (", repaired" if repair and findings else ""))
    if findings and not repair:
        raise SystemExit(1)


_DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), envvar="MODELDROP_DATA_DIR",
                         required=True, help="The server's data dir (its database from "
                                             "MODELDROP_DATABASE_URL when set). Run on the server's machine.")


@click.command("backup")
@click.argument("directory", type=click.Path(path_type=Path))
@_DATA_DIR
def backup_cmd(directory: Path, data_dir: Path) -> None:
    """Back up database, blobs, signing keys and TUF metadata into DIRECTORY (new)."""
    from registry.backup import backup
    from registry.config import Settings
    from registry.services import build_services

    services = build_services(Settings.load({"data_dir": data_dir.resolve()}))
    try:
        summary = backup(services, directory)
    except ModelDropError as e:
        raise click.ClickException(e.detail) from e
    finally:
        services.store.engine.dispose()
    click.echo(f"backed up {sum(summary['tables'].values())} rows and {summary['blobs']} blobs "
               f"into {directory}")


@click.command("restore")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@_DATA_DIR
def restore_cmd(directory: Path, data_dir: Path) -> None:
    """Restore the backup in DIRECTORY into a fresh data dir and an empty database."""
    from registry.backup import restore
    from registry.config import Settings

    try:
        summary = restore(Settings.load({"data_dir": data_dir.resolve()}), directory)
    except ModelDropError as e:
        raise click.ClickException(e.detail) from e
    click.echo(f"restored {sum(summary['tables'].values())} rows and {summary['blobs']} blobs "
               f"into {data_dir}")
