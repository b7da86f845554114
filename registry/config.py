"""Typed settings: defaults, then ``MODELDROP_*`` environment variables, then overrides.

Every running mode (embedded default or scale) is selected here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    data_dir: Path = Path("./modeldrop-data")
    # Database: empty means the embedded SQLite file <data_dir>/modeldrop.db.
    database_url: str = ""
    # Blob storage backend: "local" (dev/embedded) or "s3".
    blob_backend: str = "local"
    s3_endpoint_url: str = ""
    s3_bucket: str = "modeldrop"
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    # A read-through copy of S3 blobs on this node's disk (registry/blobs/_cache.py): the first
    # whole download of a blob fills it, later ones are served from the local file. 0 = off.
    s3_cache_bytes: int = 0  # bytes the copies may take (least recently used go first)
    s3_cache_dir: Path | None = None  # default <data_dir>/s3-cache
    # If set, artifact URLs in manifests point here (a CDN in front of the artifact route).
    public_base_url: str = ""
    cdn_base_url: str = ""
    keys_dir: Path | None = None  # default <data_dir>/keys
    # Jobs: "inprocess" (worker processes started by the web process) or "celery".
    job_backend: str = "inprocess"
    broker_url: str = ""  # e.g. redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//
    worker_processes: int = 1
    # A running job whose worker stopped heart-beating for this long goes back to the queue
    # (a killed worker; `modeldrop serve` requeues at once when it sees its own worker die).
    job_stale_after: int = 120  # seconds
    # Redis broker only: an unacknowledged message is handed out again after this long
    # (acks_late: a message is acknowledged when its job ends, not when it starts).
    celery_visibility_timeout: int = 3600  # seconds
    # /healthz answers 503 "no_workers" while no conversion worker is alive: the workers
    # `modeldrop serve` supervises, or (Celery) the workers that answer a broadcast ping.
    # False keeps it 200 then (a web tier behind a load balancer that should stay in while
    # the conversion tier is down; alert on /metrics or workers.alive instead).
    healthz_requires_workers: bool = True
    # Celery only: a conversion job still queued after this long, whose toolchain queue
    # (convert-tf, convert-torch) no live worker consumes, fails as toolchain_missing.
    toolchain_grace: int = 300  # seconds
    # Delta patches are built by the workers (jobs of kind "deltas"); bsdiff peaks near 17x
    # the artifact in memory, so larger artifacts get no patch (64 MiB: about 1.1 GiB).
    delta_max_bytes: int = 64 << 20  # bytes
    # Uploads
    max_upload_bytes: int = 2 << 30  # bytes
    max_eval_bytes: int = 64 << 20  # bytes
    max_metadata_bytes: int = 256 << 10  # bytes
    staging_max_age: int = 6 * 3600  # seconds without a write before a staged upload is swept
    # Conversion
    accuracy_drop_threshold_pp: float = 1.0  # percentage points
    # Regression outputs: a TFLite variant whose RMSE against the source exceeds this
    # fraction of the source outputs' RMS is not servable (per upload: max_relative_rmse).
    max_relative_rmse: float = 0.05
    latency_runs: int = 50
    convert_max_parallel: int = 0  # processes per conversion; 0 = automatic (min(2, CPUs))
    # The sandboxed converter (docs/security.md). "auto": bubblewrap when it works, else run
    # degraded (said at start and in /healthz); "required": refuse to convert without it.
    convert_sandbox: str = "auto"
    bwrap_path: str = "bwrap"
    sandbox_uid: int = 65534  # the converter's uid when the worker runs as root (nobody)
    sandbox_gid: int = 65534
    convert_timeout: int = 30 * 60  # seconds of wall clock per conversion job
    convert_cpu_seconds: int = 2 * 3600  # CPU seconds per converter process (RLIMIT_CPU)
    convert_memory_bytes: int = 12 << 30  # bytes of address space per converter process (RLIMIT_AS)
    convert_max_processes: int = 1024  # processes and threads of the converter's uid (RLIMIT_NPROC)
    convert_work_factor: float = 4.0  # an uploaded SavedModel may expand to this many times its size
    convert_op_check: bool = True  # refuse SavedModels with file/network/process ops before loading
    # Signing / TUF expiries
    timestamp_expiry: int = 86400  # seconds
    snapshot_expiry: int = 7 * 86400  # seconds
    targets_expiry: int = 90 * 86400  # seconds
    root_expiry: int = 365 * 86400  # seconds
    refresh_interval: int = 600  # seconds between periodic re-sign checks
    # Delivery
    manifest_ttl: int = 86400  # seconds a signed manifest stays valid
    manifest_max_age: int = 300  # seconds, Cache-Control max-age of manifests
    ruleset_ttl: int = 7 * 86400  # seconds a published ruleset stays valid (re-published at half)
    ruleset_max_age: int = 60  # seconds, Cache-Control max-age of GET /v1/rulesets/...
    # "presigned": public artifact downloads answer 302 to a short-lived presigned URL of the
    # S3 backend (the bytes never pass through the API); "" streams them as before.
    artifact_redirect: str = ""
    artifact_redirect_ttl: int = 300  # seconds a redirect's presigned URL stays valid
    # With "presigned": the scheme and host of the redirect's URL are replaced by this base (a
    # CDN or caching proxy in front of the bucket; it must forward to the bucket with the Host
    # the URL was signed for, docs/deployment.md). Empty: the bucket's own endpoint.
    artifact_redirect_base_url: str = ""
    # Auth: create <data_dir>/admin-token on first start.
    bootstrap_admin_token: bool = True
    # Telemetry
    max_telemetry_batch: int = 1000  # events
    # Guardrails count only devices the server served; below this many distinct served
    # devices on the release (or arm) they cannot trip, whatever the telemetry says.
    guardrail_min_devices: int = 10  # devices
    # Telemetry budgets (docs/deployment.md, "Rate limits"): events beyond them are refused.
    telemetry_events_per_install: int = 2000  # events per install id per hour
    telemetry_events_per_ip: int = 20000  # events per client IP per minute
    # Rate-limit counters: "memory://" (per process, the embedded default) or a Redis URL
    # (redis://127.0.0.1:6379/1) shared by every web process in the scale mode.
    rate_limit_storage_url: str = "memory://"
    # Write requests (every method but GET/HEAD/OPTIONS; telemetry has its budgets above).
    write_requests_per_token: int = 300  # requests per token per minute (0: no limit)
    write_requests_per_ip: int = 600  # requests per client IP per minute (0: no limit)
    # JSON a client sends (bodies, the upload's metadata, telemetry): refused before parsing.
    max_json_bytes: int = 1 << 20  # bytes of a JSON request body
    max_json_depth: int = 32  # nesting levels of any JSON document a client sends
    testing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            return url
        return f"sqlite:///{(Path(self.data_dir) / 'modeldrop.db').resolve()}"

    @property
    def resolved_keys_dir(self) -> Path:
        return Path(self.keys_dir) if self.keys_dir else Path(self.data_dir) / "keys"

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from defaults, the environment and explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get("MODELDROP_" + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        for key, value in (overrides or {}).items():
            if key not in {f.name for f in fields(cls)}:
                raise ValueError(f"unknown setting {key!r}")
            values[key] = value
        settings = cls(**values)
        settings.data_dir = Path(settings.data_dir)
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("bool"):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if kind.startswith("Path"):
        return Path(raw) if raw else None
    return raw
