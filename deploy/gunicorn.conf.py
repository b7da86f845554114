"""gunicorn settings for the ModelDrop web process: ``gunicorn -c deploy/gunicorn.conf.py
registry.wsgi:app``.

Everything is read from the environment so one image serves every deployment:

| variable | default | meaning |
|---|---|---|
| ``MODELDROP_BIND`` | ``0.0.0.0:8080`` | address:port (a container's port); ``127.0.0.1:PORT`` on a shared host |
| ``MODELDROP_WEB_WORKERS`` | 2 x CPUs + 1 | worker processes |
| ``MODELDROP_WEB_WORKER_CLASS`` | ``gthread`` | ``gthread`` or ``sync`` |
| ``MODELDROP_WEB_THREADS`` | 8 | threads per ``gthread`` worker |
| ``MODELDROP_WEB_TIMEOUT`` | 120 | seconds a worker may be silent before it is restarted |
| ``PROMETHEUS_MULTIPROC_DIR`` | a new temporary dir | where the workers' metric files live (``/metrics``) |

``gthread`` is the default because the same process streams artifacts: a device on a slow
link holds its thread for the whole download, and with ``sync`` workers a few such
downloads would stall every manifest poll behind them. ``sync`` is a little faster for
manifests alone (bench/bench_manifest.py measures both) and fine behind a buffering proxy
or a CDN that serves the artifacts.

The database schema, the signing keys and the first admin token are created once in the
master (``on_starting``) before workers start, so workers never race to migrate a fresh
database; each worker then builds its own application (``registry.wsgi``), so no database
connection or S3 client is shared across ``fork``.
"""

import multiprocessing
import os
import tempfile

bind = os.environ.get("MODELDROP_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("MODELDROP_WEB_WORKERS", 2 * multiprocessing.cpu_count() + 1))
worker_class = os.environ.get("MODELDROP_WEB_WORKER_CLASS", "gthread")
threads = int(os.environ.get("MODELDROP_WEB_THREADS", 8))
timeout = int(os.environ.get("MODELDROP_WEB_TIMEOUT", 120))  # seconds
graceful_timeout = 30  # seconds
keepalive = 5  # seconds an idle keep-alive connection is kept (devices poll, then go quiet)
accesslog = os.environ.get("MODELDROP_ACCESS_LOG") or None  # "-" for stdout
proc_name = "modeldrop-web"

# /metrics sums every worker's counters: prometheus-client's multiprocess mode keeps them in
# files under this directory (set before any worker starts; emptied in on_starting).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="modeldrop-metrics-")


def on_starting(server):
    """Migrate, bootstrap keys and the admin token once, in the master."""
    from registry.config import Settings
    from registry.services import build_services, ensure_admin_token

    settings = Settings.load()
    services = build_services(settings)
    ensure_admin_token(services)
    services.store.engine.dispose()
    if workers > 1 and settings.rate_limit_storage_url.startswith("memory://"):
        server.log.warning(
            "MODELDROP_RATE_LIMIT_STORAGE_URL is memory://: each of the %d workers counts rate "
            "limits and telemetry budgets alone (%d x the configured limits); point it at Redis "
            "(docs/deployment.md, Scale mode)", workers, workers)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):  # counters of an earlier run are not this run's
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))


def child_exit(server, worker):
    """A dead worker's live gauges stop counting (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """A worker leaving cleanly writes the served-install rows it still buffers
    (registry/store/_served.py; atexit does too, this does not depend on how it exits)."""
    app = getattr(worker, "wsgi", None)
    services = getattr(app, "extensions", {}).get("modeldrop") if app is not None else None
    if services is not None:
        services.store.flush_served()
