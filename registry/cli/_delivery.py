"""`modeldrop promote / rollout / rollback / releases / experiment ...`.

Thin over the HTTP API: options become a JSON body, the server validates, errors come back
as ``[code]`` messages. ``experiment`` is a click group that other modules extend
(``from registry.cli._delivery import experiment; experiment.add_command(...)``), so this
module imports nothing beyond click and the CLI plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from registry.api_client import ApiError
from registry.cli._common import client, echo_json, pass_ctx, table

__all__ = ["experiment", "register"]


def register(main: click.Group) -> None:
    for cmd in (promote, rollout, rollback, releases, experiment):
        main.add_command(cmd)


# -- shared options -----------------------------------------------------------------------

def _targeting_options(f):
    options = [
        click.option("--targeting", "targeting_file",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="JSON file with targeting rules (docs/delivery.md); excludes --target-*."),
        click.option("--target-platform", "platforms", multiple=True,
                     type=click.Choice(["ios", "android", "linux"]),
                     help="Only these platforms (repeatable)."),
        click.option("--target-os-version", "os_version", default=None,
                     help="OS version range, e.g. '>=14,<16'."),
        click.option("--target-device-model", "device_models", multiple=True,
                     help="Exact device model (repeatable)."),
        click.option("--target-device-prefix", "device_model_prefixes", multiple=True,
                     help="Device model prefix, e.g. 'iPhone15,' (repeatable)."),
        click.option("--target-app-version", "app_version", default=None,
                     help="App version range, e.g. '>=3.12'."),
        click.option("--target-region", "regions", multiple=True,
                     help="ISO 3166-1 alpha-2 region, e.g. DE (repeatable)."),
        click.option("--guardrail", "guardrails", multiple=True,
                     help="Healthy condition that halts it when broken, e.g. "
                          "'load_failure_rate < 0.02' (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _targeting(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    path = kwargs.pop("targeting_file")
    rules = {k: (list(v) if isinstance(v, tuple) else v)
             for k in ("platforms", "os_version", "device_models", "device_model_prefixes",
                       "app_version", "regions") if (v := kwargs.pop(k))}
    if path is not None:
        if rules:
            raise click.UsageError("use either --targeting FILE or --target-* options, not both")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise click.ClickException(f"{path} is not valid JSON: {e}") from e
    return rules or None


def _release_line(r: dict[str, Any]) -> str:
    pin = f" variant {r['variant']}" if r.get("variant") else ""
    return (f"{r['model']}/{r['channel']} release {r['counter']}: version {r['version']}{pin}, "
            f"{r['rollout_percent']:g}% of targeted devices, {r['state']}")


# -- releases -------------------------------------------------------------------------------

@click.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--channel", required=True, help="Channel, e.g. production or beta.")
@click.option("--rollout", "rollout_percent", type=float, default=100.0, show_default=True,
              help="Percent of the targeted devices that get it (0-100, two decimals).")
@click.option("--variant", default=None, help="Pin one variant instead of choosing per device.")
@_targeting_options
@click.option("--reason", default="", help="Why (shown in the history and audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print the release as JSON.")
@pass_ctx
def promote(ctx, name, version, channel, rollout_percent, variant, reason, as_json,
            **kwargs) -> None:
    """Release VERSION of model NAME on a channel (a new release with the next counter)."""
    body = {"version": version, "channel": channel, "rollout_percent": rollout_percent,
            "variant": variant, "targeting": _targeting(kwargs),
            "guardrails": list(kwargs.pop("guardrails")) or None, "reason": reason}
    release = client(ctx).post(f"/v1/models/{name}/releases",
                               {k: v for k, v in body.items() if v is not None})
    echo_json(release) if as_json else click.echo(_release_line(release))


@click.command()
@click.argument("name")
@click.option("--channel", required=True, help="Channel whose newest release changes.")
@click.option("--percent", "rollout_percent", type=float, default=None,
              help="New rollout percentage (widen or narrow).")
@click.option("--pause", "action", flag_value="pause", help="Stop: no new devices get it.")
@click.option("--resume", "action", flag_value="resume",
              help="Restart a paused or guardrail-halted rollout.")
@click.option("--reason", default="", help="Why (audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print the release as JSON.")
@pass_ctx
def rollout(ctx, name, channel, rollout_percent, action, reason, as_json) -> None:
    """Widen, narrow, pause or resume the rollout of NAME's newest release on a channel."""
    if (rollout_percent is None) == (action is None):
        raise click.UsageError("give exactly one of --percent, --pause, --resume")
    body: dict[str, Any] = {"reason": reason}
    if rollout_percent is not None:
        body["rollout_percent"] = rollout_percent
    else:
        body["paused"] = action == "pause"
    release = client(ctx).patch(f"/v1/models/{name}/channels/{channel}", body)
    echo_json(release) if as_json else click.echo(_release_line(release))


@click.command()
@click.argument("name")
@click.option("--channel", required=True, help="Channel to roll back.")
@click.option("--to", "to_version", type=int, default=None,
              help="Version to go back to (default: the previous release's version).")
@click.option("--reason", default="", help="Why (shown in the history and audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print the release as JSON.")
@pass_ctx
def rollback(ctx, name, channel, to_version, reason, as_json) -> None:
    """Publish a NEW release (higher counter) of NAME that points at an older version."""
    body: dict[str, Any] = {"reason": reason}
    if to_version is not None:
        body["to_version"] = to_version
    release = client(ctx).post(f"/v1/models/{name}/channels/{channel}/rollback", body)
    echo_json(release) if as_json else click.echo("rolled back: " + _release_line(release))


@click.command()
@click.argument("name")
@click.option("--channel", default=None, help="Only this channel.")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
@pass_ctx
def releases(ctx, name, channel, as_json) -> None:
    """Release history of NAME: counter, version, rollout, state, who, when, why."""
    items = client(ctx).get(f"/v1/models/{name}/releases", channel=channel)["items"]
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo(f"{name} has no releases" + (f" on {channel}" if channel else ""))
        return
    click.echo(table(
        ["CHANNEL", "COUNTER", "VERSION", "VARIANT", "ROLLOUT", "STATE", "KIND", "WHO", "WHEN",
         "WHY"],
        [(r["channel"], f"{r['counter']}{'*' if r['current'] else ''}", r["version"],
          r["variant"] or "auto", f"{r['rollout_percent']:g}%", r["state"], r["kind"],
          r["created_by"], r["created_at"][:19].replace("T", " "), r["reason"])
         for r in items]))
    for line in _stop_reasons(ctx, name, items):
        click.echo(line)


def _stop_reasons(ctx: click.Context, name: str, items: list[dict[str, Any]]) -> list[str]:
    """Why each paused release is paused: a guardrail's halt reason, else the manual pause's.

    The release carries both. Only releases paused before the server stored a pause's reason
    (no ``paused_by``) need the audit log, which only an admin may read, so other roles are
    told where to look.
    """
    paused = [r for r in items if r.get("paused") or r["state"] in ("paused", "halted")]
    if not paused:
        return []
    manual: dict[tuple[str, int], dict[str, Any]] = {}
    audit_error = None
    if any(not r.get("halted_reason") and not r.get("paused_by") for r in paused):
        try:
            entries = client(ctx).get("/v1/audit", action="release.pause", limit=1000)["items"]
        except ApiError as e:
            entries, audit_error = [], e
        for entry in entries:  # newest first: keep the latest pause of each release
            details = entry.get("details") or {}
            key = (entry.get("target", ""), details.get("counter"))
            manual.setdefault(key, entry)
    lines = []
    for r in paused:
        label = f"release {r['channel']}#{r['counter']}"
        if r.get("halted_reason"):
            lines.append(f"{label} halted by a guardrail: {r['halted_reason']} "
                         f"(resume: modeldrop rollout {name} --channel {r['channel']} --resume)")
            continue
        if r.get("paused_by"):
            who, when, why = r["paused_by"], r.get("paused_at") or "", r.get("paused_reason")
        elif (entry := manual.get((f"model:{name}/channel:{r['channel']}", r["counter"]))):
            who, when, why = entry["actor"], entry["ts"], (entry.get("details") or {}).get("reason")
        elif audit_error is not None:
            lines.append(f"{label} paused; the reason is in the audit log (admin token: "
                         f"modeldrop audit --action release.pause)")
            continue
        else:
            lines.append(f"{label} paused (no reason recorded)")
            continue
        lines.append(f"{label} paused by {who} at {when[:19].replace('T', ' ')}: "
                     f"{why or 'no reason given'}")
    return lines


# -- experiments ----------------------------------------------------------------------------

@click.group()
def experiment() -> None:
    """A/B experiments between versions or variants."""


def _parse_arm(spec: str, option: str) -> dict[str, Any]:
    name, sep, target = spec.partition("=")
    version, _, variant = target.partition(":")
    if not sep or not name or not version.isdigit():
        raise click.BadParameter(f"{spec!r}: expected NAME=VERSION or NAME=VERSION:VARIANT",
                                 param_hint=option)
    arm: dict[str, Any] = {"name": name, "version": int(version)}
    if variant:
        arm["variant"] = variant
    return arm


@experiment.command("create")
@click.argument("name")
@click.option("--model", required=True, help="Model the experiment runs on.")
@click.option("--channel", required=True, help="Channel whose devices are split.")
@click.option("--arm", "arms", multiple=True, required=True,
              help="NAME=VERSION or NAME=VERSION:VARIANT; the first arm is the control "
                   "(repeatable).")
@click.option("--variant-arm", "variant_arms", multiple=True,
              help="NAME=VERSION:VARIANT, an arm serving one variant; listed after --arm arms.")
@click.option("--split", default=None,
              help="Weights in arm order, e.g. 50,50 (default: equal).")
@click.option("--coverage", "coverage_percent", type=float, default=100.0, show_default=True,
              help="Percent of the targeted devices enrolled.")
@click.option("--seed", default=None, help="Bucketing seed (default: random).")
@_targeting_options
@click.option("--json", "as_json", is_flag=True, help="Print the experiment as JSON.")
@pass_ctx
def experiment_create(ctx, name, model, channel, arms, variant_arms, split, coverage_percent,
                      seed, as_json, **kwargs) -> None:
    """Start experiment NAME: split the devices of MODEL's channel between arms."""
    parsed = [_parse_arm(a, "--arm") for a in arms]
    for spec in variant_arms:
        arm = _parse_arm(spec, "--variant-arm")
        if "variant" not in arm:
            raise click.BadParameter(f"{spec!r} names no variant (NAME=VERSION:VARIANT)",
                                     param_hint="--variant-arm")
        parsed.append(arm)
    body: dict[str, Any] = {"name": name, "model": model, "channel": channel, "arms": parsed,
                            "coverage_percent": coverage_percent,
                            "targeting": _targeting(kwargs),
                            "guardrails": list(kwargs.pop("guardrails")) or None, "seed": seed}
    if split is not None:
        try:
            body["weights"] = [int(w) for w in split.split(",")]
        except ValueError as e:
            raise click.BadParameter(f"{split!r}: expected integers such as 50,50",
                                     param_hint="--split") from e
    created = client(ctx).post("/v1/experiments", {k: v for k, v in body.items() if v is not None})
    if as_json:
        echo_json(created)
    else:
        click.echo(f"experiment {created['name']} running on {created['model']}/"
                   f"{created['channel']} (seed {created['seed']})")
        click.echo(_arm_table(created))


def _arm_table(exp: dict[str, Any]) -> str:
    return table(["ARM", "VERSION", "VARIANT", "WEIGHT", "BUCKETS", "ASSIGNED"],
                 [(a["name"] + (" (control)" if i == 0 else ""), a["version"],
                   a["variant"] or "auto", a["weight"], f"[{a['range'][0]}, {a['range'][1]})",
                   a["assigned"]) for i, a in enumerate(exp["arms"])])


@experiment.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the definition as JSON.")
@pass_ctx
def experiment_show(ctx, name, as_json) -> None:
    """Definition and state of experiment NAME (enough to recompute any assignment)."""
    exp = client(ctx).get(f"/v1/experiments/{name}")
    if as_json:
        echo_json(exp)
        return
    click.echo(f"experiment {exp['name']}: {exp['model']}/{exp['channel']}, {exp['status']}"
               + (f", winner {exp['winner']}" if exp.get("winner") else ""))
    if exp["status"] == "paused":
        click.echo(_experiment_pause(exp))
    click.echo(f"seed {exp['seed']}  hash version {exp['hash_version']}  "
               f"coverage {exp['coverage_percent']:g}%")
    click.echo(f"targeting {json.dumps(exp['targeting']) if exp['targeting'] else 'all devices'}")
    if exp["guardrails"]:
        click.echo("guardrails " + "; ".join(
            g["expression"] if isinstance(g, dict) else str(g) for g in exp["guardrails"]))
    click.echo(_arm_table(exp))


def _experiment_pause(exp: dict[str, Any]) -> str:
    """Why a paused experiment is paused, by whom and since when (the experiment carries it)."""
    who = f" by {exp['paused_by']}" if exp.get("paused_by") else ""
    when = f" at {exp['paused_at']}" if exp.get("paused_at") else ""
    if exp.get("halted_reason"):
        by = f" ({exp['paused_by']})" if exp.get("paused_by") else ""
        return (f"experiment {exp['name']} halted by a guardrail{by}{when}: "
                f"{exp['halted_reason']} (resume: modeldrop experiment update {exp['name']} "
                "--resume)")
    if exp.get("paused_by"):
        why = exp.get("paused_reason")
        return f"experiment {exp['name']} paused{who}{when}" + (f": {why}" if why else "")
    return (f"experiment {exp['name']} paused; the reason is in the audit log (admin token: "
            "modeldrop audit --action experiment.pause)")


@experiment.command("list")
@click.option("--model", default=None, help="Only this model's experiments.")
@click.option("--status", type=click.Choice(["running", "paused", "stopped"]), default=None,
              help="Only experiments in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def experiment_list(ctx, model, status, as_json) -> None:
    """Experiments, newest first."""
    items = client(ctx).get("/v1/experiments", model=model, status=status)["items"]
    if as_json:
        echo_json(items)
        return
    click.echo(table(["NAME", "MODEL", "CHANNEL", "STATUS", "ARMS", "COVERAGE", "WINNER"],
                     [(e["name"], e["model"], e["channel"], e["status"],
                       ", ".join(a["name"] for a in e["arms"]), f"{e['coverage_percent']:g}%",
                       e["winner"] or "") for e in items]))
    for e in items:
        if e["status"] == "paused":
            click.echo(_experiment_pause(e))


@experiment.command("update")
@click.argument("name")
@click.option("--coverage", "coverage_percent", type=float, default=None,
              help="New coverage percentage (raising it never moves an enrolled device).")
@click.option("--pause", "action", flag_value="pause", help="Stop enrolling new devices.")
@click.option("--resume", "action", flag_value="resume", help="Enrol again (clears a halt).")
@click.option("--reason", default="", help="Why (audit log).")
@pass_ctx
def experiment_update(ctx, name, coverage_percent, action, reason) -> None:
    """Change coverage of experiment NAME, or pause/resume enrolment."""
    if (coverage_percent is None) == (action is None):
        raise click.UsageError("give exactly one of --coverage, --pause, --resume")
    body: dict[str, Any] = {"reason": reason}
    if coverage_percent is not None:
        body["coverage_percent"] = coverage_percent
    else:
        body["paused"] = action == "pause"
    exp = client(ctx).patch(f"/v1/experiments/{name}", body)
    click.echo(f"experiment {exp['name']}: {exp['status']}, coverage "
               f"{exp['coverage_percent']:g}%")


@experiment.command("stop")
@click.argument("name")
@click.option("--winner", default=None,
              help="Arm to release at 100% of the experiment's targeting as a new release.")
@click.option("--reason", default="", help="Why (audit log).")
@pass_ctx
def experiment_stop(ctx, name, winner, reason) -> None:
    """Stop experiment NAME; with --winner, release the winning arm."""
    body = {"reason": reason} | ({"winner": winner} if winner else {})
    result = client(ctx).post(f"/v1/experiments/{name}/stop", body)
    click.echo(f"experiment {name} stopped" + (f"; winner {winner}" if winner else ""))
    if result.get("release"):
        click.echo("released: " + _release_line(result["release"]))
