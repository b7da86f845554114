"""`modeldrop device fetch`: play a device with the client SDK, end to end.

After ``push`` and ``promote`` a newcomer wants to see the model arrive somewhere. This
command is that somewhere: the SDK's public API (``client_sdk.ModelClient``) checks the
signed manifest against the TUF root, downloads, verifies and installs the artifact, then the
command runs it once in the LiteRT interpreter and reports telemetry, exactly as an app would.
It never touches the server's internals; the device talks to the public routes only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import requests
from tqdm import tqdm

__all__ = ["register"]

ROOT_FILE = "root.json"  # the root trusted on first use, kept beside the SDK's cache


def register(main: click.Group) -> None:
    main.add_command(device)


@click.group()
def device() -> None:
    """Play a device with the client SDK (fetch, verify, install, run, report)."""


@device.command("fetch")
@click.argument("name")
@click.option("--channel", default="production", show_default=True, help="Channel to follow.")
@click.option("--root", "root_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="TUF root metadata to trust (as shipped in an app). Default: the root saved "
                   "on first use in DEVICE_DIR, else the server's 1.root.json (trust on first use).")
@click.option("--device-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("./modeldrop-device"), show_default=True,
              help="The device's storage: SDK cache, state and the trusted root.")
@click.option("--eval", "eval_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Run the model on this .npz (x, optional y) instead of zeros.")
@click.option("--platform", default="android", show_default=True,
              type=click.Choice(["android", "linux", "ios"]),
              help="Device platform (ios gets Core ML, which runs only on Apple hardware).")
@click.option("--os-version", default="14", show_default=True, help="Device OS version.")
@click.option("--device-model", default="pixel7", show_default=True, help="Device model.")
@click.option("--app-version", default="1.0.0", show_default=True, help="App version.")
@click.option("--region", default=None, help="ISO 3166-1 alpha-2 region, e.g. DE.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def device_fetch(ctx: click.Context, name: str, channel: str, root_file: Path | None,
                 device_dir: Path, eval_file: Path | None, platform: str, os_version: str,
                 device_model: str, app_version: str, region: str | None,
                 as_json: bool) -> None:
    """Fetch NAME from a channel as a device would, run it once and report telemetry.

    Prints the installed version, variant and release counter. Running it again asks the
    server again: an unchanged release downloads nothing, a new one is installed.
    """
    from client_sdk import DeviceInfo, ModelClient
    from client_sdk.errors import ModelDropError

    url = (ctx.find_root().obj or {}).get("url") or "http://127.0.0.1:8080"
    device_dir.mkdir(parents=True, exist_ok=True)
    root = _trusted_root(url, root_file, device_dir / ROOT_FILE, quiet=as_json)
    info = DeviceInfo(platform=platform, os_version=os_version, device_model=device_model,
                      app_version=app_version, region=region)
    try:
        client = ModelClient(url, device_dir / "cache", trusted_root=root, device=info)
    except (TypeError, ValueError) as e:
        raise click.ClickException(f"not a TUF root: {e}") from e
    try:
        offer = client.check_for_update(name, channel)
        if not as_json:
            click.echo(_offer_line(offer), err=True)
        # The SDK's load check makes a LiteRT interpreter after the download.
        with _without_delegate_banner(), tqdm(unit="B", unit_scale=True, desc="device download",
                                              disable=as_json or not offer.download_bytes) as bar:
            def on_progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            model = client.apply_update(offer, on_progress=on_progress)
        client.wait_for_background(timeout=10)  # the install report goes out on its own first
        run = _run_once(model, eval_file)
        if run.get("latency_ms") is not None:
            client.report_inference(model, latency_ms=run["latency_ms"],
                                    correct=run.get("first_correct"))
        flushed = client.flush_telemetry()
        install_id = client.install_id
    except ModelDropError as e:
        raise click.ClickException(f"device could not fetch {name}/{channel}: {e}") from e
    finally:
        client.close()
    result = {"model": model.name, "channel": model.channel, "version": model.version,
              "variant": model.variant, "format": model.format,
              "release_counter": model.release_counter, "experiment": model.experiment,
              "arm": model.arm, "path": str(model.path), "sha256": model.sha256,
              "size": model.size, "install_id": install_id, "run": run,
              "telemetry": {"sent": flushed.sent, "pending": flushed.pending,
                            "error": str(flushed.error) if flushed.error else None}}
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    arm = f", experiment {model.experiment} arm {model.arm}" if model.experiment else ""
    click.echo(f"device runs {model.name} v{model.version} ({model.variant}), "
               f"release counter {model.release_counter}{arm}")
    click.echo(f"  installed {model.path}")
    click.echo(f"  run: {run['summary']}")
    click.echo(f"  telemetry: {flushed.sent} event(s) sent, {flushed.pending} pending"
               + (f" ({flushed.error})" if flushed.error else ""))


def _trusted_root(url: str, root_file: Path | None, saved: Path, quiet: bool) -> bytes:
    """The root the device trusts: given, saved on first use, or fetched now (and saved)."""
    if root_file is not None:
        return root_file.read_bytes()
    if saved.exists():
        return saved.read_bytes()
    try:
        resp = requests.get(f"{url.rstrip('/')}/tuf/metadata/1.root.json", timeout=30)
    except requests.RequestException as e:
        raise click.ClickException(f"cannot reach {url}: {e}") from e
    if resp.status_code != 200:
        raise click.ClickException(f"{url} has no TUF root at /tuf/metadata/1.root.json "
                                   f"(HTTP {resp.status_code})")
    saved.write_bytes(resp.content)
    if not quiet:
        click.echo(f"note: trusting the server's root on first use, saved to {saved}; a real "
                   f"app ships its root (pass --root FILE to pin one)", err=True)
    return resp.content


def _offer_line(offer: Any) -> str:
    if not offer.update_available:
        installed = offer.installed
        return (f"up to date: v{installed.version} ({installed.variant}), release counter "
                f"{installed.release_counter}")
    how = "delta patch" if offer.is_delta else "download"
    return (f"offer: v{offer.version} ({offer.variant}), release counter "
            f"{offer.release_counter}, {how} of {offer.download_bytes} bytes")


@contextmanager
def _without_delegate_banner() -> Iterator[None]:
    """Drop LiteRT's "Created TensorFlow Lite XNNPACK delegate" line, keep the rest of stderr.

    The line comes from native code writing to file descriptor 2, so fd 2 points at a
    temporary file inside the block; afterwards fd 2 is restored and whatever else native code
    wrote is passed on. Python's own ``sys.stderr`` (progress bars, messages) keeps writing to
    the real stderr meanwhile, so nothing of ours is delayed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    try:
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. click's CliRunner: not a real file
        on_fd2 = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        live = (open(saved, "w", closefd=False, encoding=python_stderr.encoding,
                     errors="backslashreplace") if on_fd2 else None)
        if live is not None:
            sys.stderr = live
        try:
            yield
        finally:
            if live is not None:
                live.flush()
                sys.stderr = python_stderr
                live.close()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            rest = [line for line in captured.read().splitlines(keepends=True)
                    if b"XNNPACK delegate" not in line]
            if rest:
                os.write(2, b"".join(rest))


def _run_once(model: Any, eval_file: Path | None) -> dict[str, Any]:
    """Run the installed model in the LiteRT interpreter: on the eval set, else on zeros."""
    if model.format != "tflite":
        return {"summary": f"{model.format} runs only on Apple hardware; verified and "
                           f"installed, not run here", "latency_ms": None}
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    with _without_delegate_banner():
        interpreter = Interpreter(model_path=str(model.path))
        interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    shape = [d if d > 0 else 1 for d in inp["shape"]]
    if eval_file is not None:
        data = np.load(eval_file)
        xs, ys = data["x"], (data["y"] if "y" in data.files else None)
    else:
        xs, ys = np.zeros([1] + shape[1:], dtype=inp["dtype"]), None
    latencies, correct = [], []
    for i, x in enumerate(xs):
        interpreter.set_tensor(inp["index"], np.reshape(x, shape).astype(inp["dtype"]))
        start = time.perf_counter()
        interpreter.invoke()
        latencies.append((time.perf_counter() - start) * 1000)
        if ys is not None:
            correct.append(int(np.argmax(interpreter.get_tensor(out["index"]))) == int(ys[i]))
    latency = statistics.median(latencies)
    run: dict[str, Any] = {"samples": len(latencies), "latency_ms": latency,
                           "first_correct": correct[0] if correct else None}
    if correct:
        run["accuracy"] = sum(correct) / len(correct)
        run["summary"] = (f"accuracy {run['accuracy']:.3f} on {len(correct)} eval samples, "
                          f"median {latency:.3f} ms per inference")
    else:
        source = "eval samples" if eval_file is not None else "input of zeros"
        run["summary"] = (f"{len(latencies)} {source}, output shape "
                          f"{list(interpreter.get_tensor(out['index']).shape)}, "
                          f"median {latency:.3f} ms per inference")
    return run
