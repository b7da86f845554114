"""`modeldrop serve` (embedded default) and `modeldrop worker`."""

from __future__ import annotations

import shutil
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
    from registry.services import services_of

    # Absolute from here on: the converter sandbox and the workers run in other directories.
    overrides = {"data_dir": data_dir.resolve()}
    if worker_processes is not None:
        overrides["worker_processes"] = worker_processes
    settings = Settings.load(overrides)
    # The banner comes before the app starts, so these are the first lines a newcomer reads
    # (the first start then confirms the token file it creates).
    token_file = Path(settings.data_dir) / "admin-token"
    for line in _banner(host, port, Path(settings.data_dir), token_file,
                        settings.bootstrap_admin_token):
        click.echo(line)
    sys.stdout.flush()  # before any log line on stderr, also when both go to one file
    # This process is the only web process of the data dir and holds no upload yet: whatever
    # is staged was left by a crash, however recent (the age rule is for shared staging).
    from registry.blobs import blob_store_from_settings

    for path in blob_store_from_settings(settings).sweep_staging(0):
        click.echo(f"removed the abandoned upload {path.name} from staging", err=True)
    if settings.job_backend == "inprocess":  # its workers are this process's: none runs yet
        for job_dir in sorted((Path(settings.data_dir) / "work").glob("job-*")):
            shutil.rmtree(job_dir, ignore_errors=True)
            click.echo(f"removed the abandoned conversion folder {job_dir.name}", err=True)
    app = create_app(settings, start_workers=settings.job_backend == "inprocess")
    if settings.bootstrap_admin_token and not token_file.exists():
        click.echo(f"note: {token_file} is missing and tokens already exist, so none was "
                   "created; ask an admin for a token", err=True)
    # SIGTERM (service managers, `kill`) must stop the worker processes too, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        services_of(app).jobs.stop()


def _banner(host: str, port: int, data_dir: Path, token_file: Path, bootstrap: bool) -> list[str]:
    url = f"http://{host}:{port}"
    if bootstrap or token_file.exists():
        token = f"{token_file}  (export MODELDROP_TOKEN=$(cat {token_file}))"
    else:
        token = "none written (MODELDROP_BOOTSTRAP_ADMIN_TOKEN is off)"
    return [f"ModelDrop on {url}",
            f"  data dir     {data_dir}",
            f"  admin token  {token}",
            f"  dashboard    {url}/dashboard/  (sign in by pasting a token: the admin token, or "
            f"one from `modeldrop token create --role reader`)"]


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MODELDROP_DATA_DIR",
              default=Path("./modeldrop-data"), show_default=True, help="Data dir (env MODELDROP_DATA_DIR).")
def worker(data_dir: Path) -> None:
    """Run one conversion worker in the foreground (in-process backend, no broker)."""
    from registry.config import Settings
    from registry.jobs.worker import worker_main

    worker_main(Settings.load({"data_dir": data_dir.resolve()}))
