"""`modeldrop push / retry / versions / show / models / job`."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import click
from tqdm import tqdm

from registry.api_client import ApiError
from registry.cli._common import client, echo_json, human_size, pass_ctx, table


def register(main: click.Group) -> None:
    for cmd in (push, retry, versions, show, models, job):
        main.add_command(cmd)


@click.command()
@click.argument("name")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with the version's metadata.")
@click.option("--eval", "eval_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluation set (.npz with x and optional y).")
@click.option("--artifact", "artifacts", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Your own conversion of MODEL_FILE (.tflite, .mlpackage.zip or .mlmodel; repeatable, one per "
                   "format): an extra variant served as those bytes, measured against MODEL_FILE.")
@click.option("--version", "number", type=int, default=None, help="Explicit version number.")
@click.option("--wait/--no-wait", default=False, help="Wait for conversion with a progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the created version as JSON.")
@pass_ctx
def push(ctx, name, model_file, metadata_file, eval_file, artifacts, number, wait, as_json) -> None:
    """Upload MODEL_FILE (.keras, .h5, SavedModel .zip, torch.export .pt2, TorchScript .pt; or your own .tflite,
    .mlpackage.zip or .mlmodel, served as uploaded) as a new version of NAME."""
    metadata = _read_metadata(metadata_file)
    total = model_file.stat().st_size + (eval_file.stat().st_size if eval_file else 0)
    total += sum(p.stat().st_size for p in artifacts)
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", disable=as_json) as bar:
        try:
            result = client(ctx).upload(name, model_file, metadata, eval_file, bar.update, number,
                                        artifacts=artifacts)
        except ApiError as e:
            if e.code != "version_failed":
                raise
            raise click.ClickException(_failed_again(name, {"version": e.body.get("version"),
                                                            "error": e.body.get("error")})) from e
    if result["status"] == "failed":  # a server from before the version_failed answer
        # A new version starts as "uploaded", so "failed" means these bytes already were a
        # version, and the server kept it as it was: say so instead of exiting 0.
        raise click.ClickException(_failed_again(name, result))
    if not as_json:
        job_note = f"conversion job {result['job']}" if result.get("job") else "no job"
        click.echo(f"{name} version {result['version']}: {result['status']} "
                   f"(sha256 {result['source']['sha256'][:12]}, {job_note})")
        if eval_file is not None and result["source"].get("eval_sha256") != _sha256(eval_file):
            click.echo(f"note: these bytes already were version {result['version']}, which keeps "
                       f"its own eval set and metadata; the ones sent now were not applied",
                       err=True)
    if wait and result.get("job"):
        result = _wait_for_job(ctx, result["job"], quiet=as_json) or result
    if as_json:
        echo_json(result)


def _failed_again(name: str, version: dict) -> str:
    number = version["version"]
    return (f"{name} version {number} already holds these bytes, and its conversion failed: "
            f"{version.get('error') or 'no reason recorded'}\n"
            f"The same file always maps to the same version and a failed version stays failed, "
            f"so this push changed nothing (its --metadata and --eval were not applied).\n"
            f"Fix the cause and run the conversion again, with the fixed files if they were the "
            f"cause: modeldrop retry {name} {number} [--eval FILE] [--metadata FILE]. "
            f"Details: modeldrop show {name} {number}")


def _read_metadata(metadata_file: Path | None) -> str | None:
    if not metadata_file:
        return None
    metadata = metadata_file.read_text()
    try:
        json.loads(metadata)
    except json.JSONDecodeError as e:
        raise click.ClickException(f"{metadata_file} is not valid JSON: {e}") from e
    return metadata


@click.command()
@click.argument("name")
@click.argument("number", type=int)
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file whose top-level fields replace the version's metadata.")
@click.option("--eval", "eval_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A new evaluation set (.npz with x and optional y).")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.option("--wait/--no-wait", default=False, help="Wait for conversion with a progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the version as JSON.")
@pass_ctx
def retry(ctx, name, number, metadata_file, eval_file, reason, wait, as_json) -> None:
    """Re-run the failed conversion of version NUMBER of NAME (publisher role)."""
    result = client(ctx).retry(name, number, _read_metadata(metadata_file), eval_file, reason)
    if not as_json:
        click.echo(f"{name} version {number}: conversion queued again (job {result['job']})")
    if wait:
        result = _wait_for_job(ctx, result["job"], quiet=as_json) or result
    if as_json:
        echo_json(result)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _wait_for_job(ctx, job_id: str, quiet: bool = False):
    api = client(ctx)
    bar = None
    while True:
        job = api.get(f"/v1/jobs/{job_id}")
        total = job["progress"]["total"] or 1
        if bar is None and not quiet:
            bar = tqdm(total=total, desc="convert", unit="variant")
        if bar is not None:
            bar.total = total
            bar.n = job["progress"]["done"]
            bar.set_postfix_str(job["progress"]["note"][-40:])
            bar.refresh()
        if job["state"] in ("done", "failed"):
            if bar is not None:
                bar.close()
            break
        time.sleep(1.0)
    version = api.get(f"/v1/models/{job['model']}/versions/{job['version']}")
    if not quiet:
        click.echo(f"conversion {job['state']}; version status {version['status']}")
        if job.get("error"):
            click.echo(f"error: {job['error']}", err=True)
        click.echo(_variant_table(version))
    if job["state"] == "failed":
        raise click.ClickException(f"conversion failed: {job.get('error')}")
    return version


@click.command()
@click.argument("name")
@click.option("--limit", default=20, show_default=True, help="Versions per page.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def versions(ctx, name, limit, as_json) -> None:
    """List versions of NAME, newest first."""
    page = client(ctx).get(f"/v1/models/{name}/versions", limit=limit)
    if as_json:
        return echo_json(page)
    rows = [(v["version"], v["status"], human_size(v["source"]["size"]),
             ", ".join(f"{k}={val}" for k, val in v["metadata"].get("accuracy", {}).items()) or "-",
             v["created_at"][:19].replace("T", " ")) for v in page["items"]]
    click.echo(table(["VERSION", "STATUS", "SIZE", "ACCURACY", "CREATED"], rows))


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _output_rows(fid: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(output, task, agreement, accuracy, drop, relative RMSE) per output: one row per output
    where the fidelity lists several, else one row from the top-level figures."""
    outputs = fid.get("outputs") if isinstance(fid.get("outputs"), dict) else {}
    if len(outputs) > 1:
        tables = [(name, f if isinstance(f, dict) else {}) for name, f in outputs.items()]
    else:
        only = next(iter(outputs.values()), {}) if outputs else {}
        tables = [(next(iter(outputs), "-"), {**(only if isinstance(only, dict) else {}), **fid})]
    return [(name, f.get("task") or "-", _fmt(f.get("top1_agreement")), _fmt(f.get("accuracy")),
             _fmt(f.get("accuracy_drop")), _fmt(f.get("relative_rmse"))) for name, f in tables]


def _variant_table(version: dict) -> str:
    rows = []
    for v in version.get("variants", []):
        fid = v.get("fidelity") or {}
        lat = v.get("reference_latency_ms") or {}
        for i, (output, task, agree, acc, drop, rmse) in enumerate(_output_rows(fid)):
            if i == 0:
                rows.append((v["name"], human_size(v.get("size")), output, task, agree, acc, drop,
                             rmse, _fmt(fid.get("weight_rel_error")),
                             f"{_fmt(lat.get('p50'))}/{_fmt(lat.get('p90'))}" if lat else "-",
                             "yes" if v["servable"] else "no", v.get("reason") or ""))
            else:  # a further output of the same variant
                rows.append(("", "", output, task, agree, acc, drop, rmse, "", "", "", ""))
    if not rows:
        return "(no variants yet)"
    return table(["VARIANT", "SIZE", "OUTPUT", "TASK", "AGREE", "ACC", "DROP(pp)", "REL-RMSE",
                  "W-ERR", "SERVER p50/p90 ms", "SERVABLE", "REASON"], rows)


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape or []) + "]"


def _signature_table(version: dict) -> str | None:
    """The inputs and outputs each variant's artifact has; variants with the same signature
    share one block. None when no variant has one (converted before signatures were kept)."""
    groups: dict[str, list[str]] = {}
    signatures: dict[str, dict] = {}
    for v in version.get("variants", []):
        if v.get("signature"):
            key = json.dumps(v["signature"], sort_keys=True)
            groups.setdefault(key, []).append(v["name"])
            signatures[key] = v["signature"]
    if not groups:
        return None
    rows = []
    for key, names in groups.items():
        every = len(groups) == 1 and len(names) == len(version.get("variants", []))
        label = "all variants" if every else ", ".join(names)
        for side in ("inputs", "outputs"):
            for t in signatures[key].get(side) or []:
                dtype = t.get("dtype", "")
                if t.get("narrowed_from"):
                    dtype += f" (from {t['narrowed_from']})"
                rows.append((label, side[:-1], t.get("name", ""), dtype, _dims(t.get("shape"))))
                label = ""
    return table(["SIGNATURE", "KIND", "TENSOR", "DTYPE", "SHAPE"], rows)


@click.command()
@click.argument("name")
@click.argument("number", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def show(ctx, name, number, as_json) -> None:
    """Show all metadata of version NUMBER of NAME, with its variants."""
    api = client(ctx)
    v = api.get(f"/v1/models/{name}/versions/{number}")
    try:
        latency = api.get(f"/v1/models/{name}/versions/{number}/latency")
    except ApiError as e:
        if e.status != 404:  # an older server without the latency route still shows the rest
            raise
        latency = None
    if as_json:
        if latency is not None:
            v["device_latency"] = latency
        return echo_json(v)
    meta = v["metadata"]
    rows = [("model", v["model"]), ("version", v["version"]), ("status", v["status"]),
            ("source", f"{v['source']['format']} {human_size(v['source']['size'])} "
                       f"sha256 {v['source']['sha256']}"),
            ("created", f"{v['created_at']} by {v['created_by']}")]
    rows += [("attached", f"{a['filename']} -> {a['variant']} {human_size(a['size'])} sha256 {a['sha256']}")
             for a in v["source"].get("attachments") or []]
    rows += [(k, json.dumps(val) if isinstance(val, (dict, list)) else val)
             for k, val in meta.items() if val not in (None, [], {}, "")]
    if v.get("error"):
        rows.append(("error", v["error"]))
    click.echo(table(["FIELD", "VALUE"], rows))
    click.echo("")
    click.echo(_variant_table(v))
    signature = _signature_table(v)
    if signature:
        click.echo("")
        click.echo(signature)
    if latency and latency.get("items"):
        click.echo("")
        click.echo(table(["VARIANT", "DEVICE", "N", "p50 ms", "p90 ms", "p99 ms", "UPLOADED ms"],
                         [(r["variant"], r["device_model"], r["count"], _fmt(r["p50"]), _fmt(r["p90"]),
                           _fmt(r["p99"]), _fmt(r.get("uploaded_ms"))) for r in latency["items"]]))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def models(ctx, as_json) -> None:
    """List models."""
    data = client(ctx).get("/v1/models")
    if as_json:
        return echo_json(data)
    click.echo(table(["MODEL", "VERSIONS", "LATEST", "CREATED"],
                     [(m["name"], m["version_count"], m["latest_version"], m["created_at"][:19])
                      for m in data["items"]]))


@click.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait with a progress bar until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@pass_ctx
def job(ctx, job_id, wait, as_json) -> None:
    """Show a conversion job: state, progress, timing and each variant's outcome."""
    if wait:
        _wait_for_job(ctx, job_id, quiet=as_json)
    data = client(ctx).get(f"/v1/jobs/{job_id}")
    if as_json:
        return echo_json(data)
    if not wait:
        click.echo(_job_summary(data))


def _when(ts: str | None) -> str:
    return ts[:19].replace("T", " ") if ts else "-"


def _job_summary(data: dict) -> str:
    progress = data.get("progress") or {}
    lines = [f"job {data['id']} ({data.get('kind', 'convert')}): {data['model']} version "
             f"{data['version']}, {data['state']}, {progress.get('done', 0)} of "
             f"{progress.get('total', 0)} variants"]
    timing = f"  created {_when(data.get('created_at'))}, started {_when(data.get('started_at'))}"
    if data.get("finished_at"):
        timing += f", finished {_when(data['finished_at'])}"
    lines.append(timing + f", attempt {data.get('attempts', 1)}")
    if progress.get("note"):
        lines.append(f"  progress: {progress['note']}")
    if data.get("error"):
        lines.append(f"  error: {data['error']}")
    results = data.get("results") or {}
    if results:
        lines.append("")
        lines.append(table(["VARIANT", "STATE", "SERVABLE", "ERROR"],
                           [(name, r.get("state"), "yes" if r.get("servable") else "no",
                             r.get("error") or "") for name, r in sorted(results.items())]))
    return "\n".join(lines)
