"""`modeldrop token / keys / audit`."""

from __future__ import annotations

import click

from registry.cli._common import client, echo_json, pass_ctx, table


def register(main: click.Group) -> None:
    main.add_command(token)
    main.add_command(keys)
    main.add_command(audit)


@click.group()
def token() -> None:
    """Manage API tokens (admin)."""


@token.command("create")
@click.option("--role", type=click.Choice(["reader", "publisher", "admin"]), required=True,
              help="What the token may do.")
@click.option("--name", default="", help="A label to recognise the token by.")
@pass_ctx
def token_create(ctx, role, name) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    created = client(ctx).post("/v1/tokens", {"role": role, "name": name})
    click.echo(created["token"])
    click.echo(f"(token {created['id']}, role {created['role']}; store it now, it is not shown again)",
               err=True)


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
