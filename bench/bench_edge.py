"""Edge delivery, side by side: what a poll and a download cost in each mode.

    .venv/bin/python bench/bench_edge.py [--duration 10] [--artifact-mb 100]

One data dir (bench_manifest.prepare: two versions, v2 at a 50% staged rollout) served by
gunicorn (deploy/gunicorn.conf.py), exported with ``modeldrop mirror export`` and served by
nginx (``apt-get install -y nginx`` when missing; benchmarks only). Then, in one run:

1. ``wrk -t2 -c64``: the ruleset from nginx (the exported mirror), the dynamic ruleset route,
   the dynamic manifest route (10,000 install ids), and a bare Flask app (constant 800 B);
2. the SDK's local decision (``client_sdk.rules.evaluate_ruleset``), microseconds per
   decision over 100,000 install ids in CPython;
3. the bytes on the wire of a "no update" poll: server mode (manifest with ``If-None-Match``,
   answered 304) and local mode (what python-tuf fetches when nothing changed: the next root,
   404, and timestamp.json; the cached ruleset's hash still matches, so nothing else), plus
   a 304 of the ruleset route for reference;
4. a large artifact (``--artifact-mb``), one row after the other with nginx first and last:
   from nginx (sendfile); through the API on the local blob store; through the API on the S3
   backend (a real ``weed server``, tests/seaweed.py), streamed from the bucket, then with the
   read-through disk cache (``MODELDROP_S3_CACHE_BYTES``: the first download fills it, the
   later ones are sent from the local copy); a 302 to a presigned SeaweedFS URL
   (``MODELDROP_ARTIFACT_REDIRECT=presigned``); and that 302 pointed at a caching nginx in
   front of the bucket (``proxy_cache``, the CDN stand-in; ``MODELDROP_ARTIFACT_REDIRECT_
   BASE_URL``), first the miss, then hits; and those two URLs fetched without the 302. The
   first downloads once; then ``--downloads`` rounds of one download per row (nginx included,
   and a block of nginx downloads first and last), median MB/s per row, each download's
   sha256 checked outside the clock.

Writes bench/results/edge.json. Everything listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_manifest import LUA, QUERY, Server, ensure_wrk, free_port, measure, prepare  # noqa: E402

from tests.seaweed import start_seaweedfs  # noqa: E402

FIXED_LUA = r"""
function request()
  return wrk.format("GET", "%(path)s")
end
""" + LUA[LUA.index("function done"):]

NGINX_CONF = """
worker_processes 2;
pid %(dir)s/nginx.pid;
error_log %(dir)s/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  types { application/json json; }
  server {
    listen 127.0.0.1:%(port)d;
    root %(mirror)s;
    location /v1/rulesets/ { default_type application/json; etag on;
                             add_header Cache-Control "public, max-age=60"; }
    location /tuf/metadata/ { add_header Cache-Control "no-cache"; }
  }
  # the CDN stand-in in front of the bucket: a presigned URL's path names immutable bytes, so
  # the cache key leaves out the query (the signature, checked by the bucket on a miss)
  proxy_cache_path %(dir)s/cdn-cache levels=1:2 keys_zone=blobs:10m max_size=4g
                   inactive=7d use_temp_path=off;
  server {
    listen 127.0.0.1:%(cdn_port)d;
    location / {
      proxy_pass %(s3)s;
      proxy_set_header Host $proxy_host;  # the host the URL was signed for
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache blobs;
      proxy_cache_key $uri;
      proxy_cache_valid 200 7d;
      proxy_cache_lock on;
      proxy_force_ranges on;
      add_header X-Cache-Status $upstream_cache_status;
    }
  }
}
"""


def wire_bytes(port: int, path: str, headers: dict[str, str]) -> int:
    """Bytes of one request and its whole response on a fresh connection (both directions)."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1",
             "User-Agent: modeldrop-sdk-python/0.1", "Accept-Encoding: identity",
             "Accept: application/json", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
    return len(request) + received


def _one_download(url: str, size: int, sha256: str) -> float:
    chunks = []
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=120) as resp:
        while chunk := resp.read(1 << 20):
            chunks.append(chunk)
    elapsed = time.monotonic() - started
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    got = sum(map(len, chunks))
    assert got == size and digest.hexdigest() == sha256, (url, got, size)
    return round(size / (1 << 20) / elapsed, 1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _location(url: str) -> str:
    """Where the artifact route redirects ``url`` to."""
    try:
        urllib.request.build_opener(_NoRedirect).open(url, timeout=10)
    except urllib.error.HTTPError as err:
        assert err.code == 302, err
        return err.headers["Location"]
    raise AssertionError(f"{url} did not redirect")


def prepare_redirect(data_dir: Path, s3_env: dict[str, str], big: bytes) -> str:
    """A data dir on the S3 backend with ``big`` as a released (so public) variant."""
    from registry.config import Settings
    from registry.delivery import releases
    from registry.services import build_services
    from registry.signing import variant_target_path

    overrides = {k.removeprefix("MODELDROP_").lower(): v for k, v in s3_env.items()}
    services = build_services(Settings.load({"data_dir": data_dir, **overrides}))
    source = services.blobs.put_bytes(b"bench edge redirect source")
    version, _ = services.store.create_version(
        "digits", sha256=source.sha256, size=source.size, source_format="keras",
        filename="model.keras", metadata={"framework": "keras"}, eval_sha256=None,
        actor="bench")
    version_id = services.store.version_id("digits", version.version)
    info = services.blobs.put_bytes(big)
    path = variant_target_path("digits", version.version, "tflite-fp32", "tflite")
    services.signing.add_targets([services.target_spec(
        path, info.sha256, info.size, model="digits", version=version.version,
        variant="tflite-fp32", format="tflite", kind="variant")])
    services.store.record_variant(
        version_id, name="tflite-fp32", format="tflite", sha256=info.sha256, size=info.size,
        target_path=path, fidelity={"top1_agreement": 0.99}, reference_latency_ms=None,
        servable=True, reason=None, error=None)
    services.store.set_version_status(version_id, "ready")
    releases.promote(services, "digits", version.version, channel="production", actor="bench")
    services.store.engine.dispose()
    return info.sha256


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--artifact-mb", type=int, default=100)
    ap.add_argument("--downloads", type=int, default=3, help="downloads per artifact row (median)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "edge.json")
    args = ap.parse_args()
    wrk = ensure_wrk()
    if not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "nginx"], check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    work.chmod(0o755)  # nginx workers run as another user
    data_dir, mirror = work / "data", work / "mirror"
    prepare(data_dir)

    # a large public artifact for the download figures
    from registry.config import Settings
    from registry.services import build_services

    services = build_services(Settings.load({"data_dir": data_dir}))
    big = random.Random(7).randbytes(args.artifact_mb << 20)
    info = services.blobs.put_bytes(big)
    services.signing.add_targets([services.target_spec(
        "digits/99/big.tflite", info.sha256, info.size, model="digits", version=99,
        variant="big", format="tflite", kind="variant")])
    services.store.engine.dispose()

    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    api = Server(data_dir, "sync", 5, bare=None)
    bare = Server(data_dir, "sync", 5, bare="bare")
    nginx_port, cdn_port = free_port(), free_port()
    conf = work / "nginx.conf"
    nginx = None
    s3_servers: list[Server] = []
    seaweed = contextlib.ExitStack()
    try:
        endpoint = seaweed.enter_context(start_seaweedfs(work / "seaweedfs"))
        api.wait_ready()
        bare.wait_ready()
        subprocess.run([sys.executable, "-m", "registry.cli", "--url", api.base, "mirror",
                        "export", str(mirror)], check=True, capture_output=True, cwd=ROOT)
        # the big artifact is a TUF target but no release names it: copy it by hand
        (mirror / "v1/artifacts").mkdir(parents=True, exist_ok=True)
        (mirror / "v1/artifacts" / info.sha256).write_bytes(big)
        conf.write_text(NGINX_CONF % {"dir": work, "port": nginx_port, "mirror": mirror,
                                      "cdn_port": cdn_port, "s3": endpoint})
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"],
                                 start_new_session=True)
        time.sleep(1)
        ruleset_path = "/v1/rulesets/digits/production"
        nginx_base = f"http://127.0.0.1:{nginx_port}"
        with urllib.request.urlopen(nginx_base + ruleset_path) as resp:
            ruleset_bytes = resp.read()
        with urllib.request.urlopen(api.base + ruleset_path) as resp:
            assert resp.read() == ruleset_bytes

        ids = [f"{random.Random(i).getrandbits(128):032x}" for i in range(10_000)]
        ids = [f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}" for h in ids]
        (work / "ids.txt").write_text("\n".join(ids) + "\n")
        manifest_lua = work / "manifest.lua"
        manifest_lua.write_text(LUA % {"ids": work / "ids.txt", "query": QUERY})
        ruleset_lua = work / "ruleset.lua"
        ruleset_lua.write_text(FIXED_LUA % {"path": ruleset_path})
        bare_lua = work / "bare.lua"
        bare_lua.write_text(FIXED_LUA % {"path": "/v1/manifest"})

        class Static:
            base = nginx_base
            proc = nginx  # measure() counts the CPU of its session (nginx started its own)
        rows = {
            "ruleset from nginx (exported mirror)": measure(wrk, Static, ruleset_lua,
                                                            args.duration, 64),
            "ruleset route (gunicorn sync)": measure(wrk, api, ruleset_lua, args.duration, 64),
            "manifest route (gunicorn sync)": measure(wrk, api, manifest_lua, args.duration, 64),
            "bare Flask, constant 800 B": measure(wrk, bare, bare_lua, args.duration, 64),
        }
        base_rps = rows["bare Flask, constant 800 B"]["requests_per_s"]
        for row in rows.values():
            row["ratio_vs_bare_flask"] = round(row["requests_per_s"] / base_rps, 2)
        results["throughput"] = rows
        results["ruleset_bytes"] = len(ruleset_bytes)

        # 2. local decisions per second in CPython
        from client_sdk import DeviceInfo
        from client_sdk.rules import evaluate_ruleset, parse_ruleset

        ruleset = parse_ruleset(ruleset_bytes, "digits", "production")
        devices = [DeviceInfo(platform=p, os_version="14", device_model=m, app_version="3.2.0",
                              region=r) for p, m, r in (("android", "pixel7", "DE"),
                                                         ("ios", "iPhone15,2", "us"),
                                                         ("android", "sm-s918b", "fr"))]
        decision_ids = [f"{random.Random(i).getrandbits(64):016x}-id" for i in range(100_000)]
        started = time.perf_counter()
        for n, install_id in enumerate(decision_ids):
            evaluate_ruleset(ruleset, install_id, devices[n % 3], {})
        per = (time.perf_counter() - started) / len(decision_ids) * 1e6
        results["local_decision_us"] = round(per, 1)

        # 3. bytes on the wire of a poll with nothing new
        with urllib.request.urlopen(api.base + QUERY + ids[0]) as resp:
            etag = resp.headers["ETag"]
        api_port = int(api.base.rsplit(":", 1)[1])
        with urllib.request.urlopen(nginx_base + ruleset_path) as resp:
            ruleset_etag = resp.headers["ETag"]
        root_versions = len(list((mirror / "tuf/metadata").glob("*.root.json")))
        results["no_update_poll_bytes"] = {
            "server mode: manifest 304": wire_bytes(api_port, QUERY + ids[0],
                                                     {"If-None-Match": etag}),
            "local mode via nginx: next root 404 + timestamp.json": (
                wire_bytes(nginx_port, f"/tuf/metadata/{root_versions + 1}.root.json", {})
                + wire_bytes(nginx_port, "/tuf/metadata/timestamp.json", {})),
            "local mode via API: next root 404 + timestamp.json": (
                wire_bytes(api_port, f"/tuf/metadata/{root_versions + 1}.root.json", {})
                + wire_bytes(api_port, "/tuf/metadata/timestamp.json", {})),
            "ruleset 304 from nginx (reference)": wire_bytes(
                nginx_port, ruleset_path, {"If-None-Match": ruleset_etag}),
        }

        # 4. the artifact: nginx, the API (local, S3 streamed, S3 cached), 302s (bucket, CDN)
        bare.stop()  # not needed any more: one gunicorn fewer on two cores
        s3_env = {"MODELDROP_BLOB_BACKEND": "s3", "MODELDROP_S3_ENDPOINT_URL": endpoint,
                  "MODELDROP_S3_BUCKET": "bench-edge", "MODELDROP_S3_ACCESS_KEY": "any",
                  "MODELDROP_S3_SECRET_KEY": "any"}
        redirect_dir = work / "data-s3"
        assert prepare_redirect(redirect_dir, s3_env, big) == info.sha256
        cache_dir = work / "s3-cache"
        cdn_base = f"http://127.0.0.1:{cdn_port}"
        envs = {
            "streamed": s3_env,
            "cached": {**s3_env, "MODELDROP_S3_CACHE_DIR": str(cache_dir),
                       "MODELDROP_S3_CACHE_BYTES": str(4 << 30)},
            "redirect": {**s3_env, "MODELDROP_ARTIFACT_REDIRECT": "presigned"},
            "cdn": {**s3_env, "MODELDROP_ARTIFACT_REDIRECT": "presigned",
                    "MODELDROP_ARTIFACT_REDIRECT_BASE_URL": cdn_base},
        }
        s3 = {}
        for name, env in envs.items():
            s3[name] = Server(redirect_dir, "sync", 5, bare=None, env=env, label=name)
            s3_servers.append(s3[name])
        for server in s3.values():
            server.wait_ready()
        url = {name: f"{server.base}/v1/artifacts/{info.sha256}" for name, server in s3.items()}
        for name, prefix in (("redirect", endpoint), ("cdn", cdn_base)):
            assert _location(url[name]).startswith(prefix), name
        results["artifact_mb"] = args.artifact_mb
        results["artifact_downloads_per_row"] = args.downloads
        results["artifact_load_average_before"] = [round(x, 2) for x in os.getloadavg()]
        n, size, sha = args.downloads, len(big), info.sha256
        nginx_url = f"{nginx_base}/v1/artifacts/{sha}"
        # one after the other: nginx first and last, so load drift shows in its two figures
        nginx_first = [_one_download(nginx_url, size, sha) for _ in range(n)]
        first = {  # the first download of a blob fills the API's disk cache / the CDN's cache
            "through the API (S3 backend + disk cache), first download: fills the cache":
                _one_download(url["cached"], size, sha),
            "302 to a caching nginx in front of SeaweedFS, first download (miss)":
                _one_download(url["cdn"], size, sha),
        }
        # the API publishes its copy after the last chunk is sent (fsync off the client's clock)
        deadline = time.monotonic() + 60
        while not (cache_dir / sha[:2] / sha).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (cache_dir / sha[:2] / sha).is_file(), "the first download did not fill the cache"
        with urllib.request.urlopen(url["cdn"], timeout=120) as resp:
            assert resp.headers["X-Cache-Status"] == "HIT", resp.headers["X-Cache-Status"]
            resp.read()
        presigned = _location(url["redirect"])
        rows = {
            "nginx (exported mirror)": nginx_url,
            # the TUF target route streams with the artifact route's code (stream_blob)
            "through the API (gunicorn sync, local blob store)":
                f"{api.base}/tuf/targets/digits/99/{sha}.big.tflite",
            "through the API (S3 backend, streamed from SeaweedFS)": url["streamed"],
            "through the API (S3 backend + disk cache), cached": url["cached"],
            "302 to SeaweedFS (presigned redirect)": url["redirect"],
            "302 to a caching nginx in front of SeaweedFS (CDN stand-in), cached": url["cdn"],
            # the same two without the API's 302, to show what the redirect costs
            "SeaweedFS, presigned URL fetched directly": presigned,
            "caching nginx in front of SeaweedFS, cached, fetched directly":
                cdn_base + presigned[len(endpoint):],
        }
        # rounds: one download per row each round, so load drift spreads over every row
        samples: dict[str, list[float]] = {name: [] for name in rows}
        samples["nginx (exported mirror)"] += nginx_first
        for _ in range(n):
            for name, row_url in rows.items():
                samples[name].append(_one_download(row_url, size, sha))
        nginx_last = [_one_download(nginx_url, size, sha) for _ in range(n)]
        samples["nginx (exported mirror)"] += nginx_last
        rates = {name: statistics.median(values) for name, values in samples.items()}
        rates.update(first)
        nginx_rate = rates["nginx (exported mirror)"]
        results["artifact_mb_per_s"] = rates
        results["artifact_samples_mb_per_s"] = samples
        results["artifact_nginx_first_last"] = [statistics.median(nginx_first),
                                                statistics.median(nginx_last)]
        results["artifact_ratio_vs_nginx"] = {k: round(v / nginx_rate, 2) for k, v in rates.items()}
        results["artifact_load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        api.stop()
        if bare.proc.poll() is None:
            bare.stop()
        for server in s3_servers:
            server.stop()
        seaweed.close()
        if nginx is not None:
            os.killpg(nginx.pid, signal.SIGTERM)
            nginx.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
