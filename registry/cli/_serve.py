"""`modeldrop serve` (embedded default) and `modeldrop worker`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click


def register(main: click.Group) -> None:
    main.add_command(serve)
    main.add_command(worker)


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MODELDROP_DATA_DIR",
              default=Path("./modeldrop-data"), show_default=True,
              help="Where the SQLite file, blobs and keys live (env MODELDROP_DATA_DIR).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", "worker_processes", default=None, type=int,
              help="Conversion worker processes (default from MODELDROP_WORKER_PROCESSES or 1).")
def serve(data_dir: Path, host: str, port: int, worker_processes: int | None) -> None:
    """Run the registry on the embedded default (SQLite, local blobs, in-process workers)."""
    from werkzeug.serving import run_simple

    from registry.app import create_app
    from registry.config import Settings

    overrides = {"data_dir": data_dir}
    if worker_processes is not None:
        overrides["worker_processes"] = worker_processes
    settings = Settings.load(overrides)
    app = create_app(settings, start_workers=settings.job_backend == "inprocess")
    token_file = Path(settings.data_dir) / "admin-token"
    click.echo(f"ModelDrop on http://{host}:{port}  data dir: {Path(settings.data_dir).resolve()}")
    if token_file.exists():
        click.echo(f"admin token: {token_file.resolve()} (export MODELDROP_TOKEN=$(cat {token_file}))")
    # SIGTERM (service managers, `kill`) must stop the worker processes too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        app.extensions["modeldrop"].jobs.stop()


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MODELDROP_DATA_DIR",
              default=Path("./modeldrop-data"), show_default=True, help="Data dir (env MODELDROP_DATA_DIR).")
def worker(data_dir: Path) -> None:
    """Run one conversion worker in the foreground (in-process backend, no broker)."""
    from registry.config import Settings
    from registry.jobs.worker import worker_main

    worker_main(Settings.load({"data_dir": data_dir}))
