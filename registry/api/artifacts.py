"""Immutable, content-addressed artifact downloads with resume (Range/If-Range) and caching.

The bytes are streamed from the blob store in chunks; the file is never loaded into memory.
Only artifacts the registry recorded are served, so the route is not a window onto the bucket.

Public artifacts (released variants and their delta patches) need no token. Sources, eval
sets and variants no release has made deliverable yet are confidential: they need a
reader token (any role), an anonymous request gets 401, and they are cached privately
only, so a shared cache (a CDN) never hands them to someone else.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from flask import Blueprint, Response, request
from werkzeug.wsgi import wrap_file

from registry.auth import authenticate
from registry.errors import ArtifactNotFoundError, InvalidRangeError
from registry.services import current_services

bp = Blueprint("artifacts", __name__)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMMUTABLE = "public, max-age=31536000, immutable"
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"  # confidential: no shared caches
CHUNK = 1 << 20  # bytes per read when the bytes pass through Python


def stream_blob(sha256: str, *, content_type: str = "application/octet-stream",
                cache_control: str = IMMUTABLE) -> Response:
    """A 200/206/304/416 response for a blob, honouring Range, If-Range and If-None-Match."""
    blobs = current_services().blobs
    if not SHA256_RE.fullmatch(sha256):
        raise ArtifactNotFoundError(f"no artifact with sha256 {sha256[:64]!r}")
    size = blobs.size(sha256)  # ArtifactNotFoundError when missing: one HEAD on S3, not two
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": cache_control}
    if request.if_none_match and request.if_none_match.contains(sha256):
        return Response(status=304, headers=headers)
    rng = request.range
    if rng is not None and request.if_range and request.if_range.etag not in (None, sha256):
        rng = None  # the client's partial copy is of other bytes: send everything
    if rng is not None:
        bounds = rng.range_for_length(size)
        if bounds is None:
            raise InvalidRangeError(f"range not satisfiable for an artifact of {size} bytes",
                                    size=size)
        start, stop = bounds
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        headers["Content-Length"] = str(stop - start)
        body = _body(blobs, sha256, start, stop, size) if request.method != "HEAD" else []
        return Response(body, status=206, headers=headers, mimetype=content_type,
                        direct_passthrough=True)
    headers["Content-Length"] = str(size)
    body = _body(blobs, sha256, 0, size, size) if request.method != "HEAD" else []
    return Response(body, status=200, headers=headers, mimetype=content_type,
                    direct_passthrough=True)


def _body(blobs, sha256: str, start: int, stop: int, size: int):
    """Bytes ``start..stop-1``. A blob with a file here (local store, or an S3 blob's cached
    copy) that is sent to its end goes to the server's ``wsgi.file_wrapper``: gunicorn sends
    it with ``sendfile(2)`` from the file's offset, no copy through Python. Anything else
    (a slice that stops early, a blob only in the bucket) streams in chunks."""
    if stop == size:
        path = blobs.local_path(sha256)
        if path is not None:
            try:
                f = open(path, "rb")  # the server closes it after sending
            except FileNotFoundError:  # evicted from the cache since: read the bucket
                pass
            else:
                if os.fstat(f.fileno()).st_size == size:
                    f.seek(start)
                    return wrap_file(request.environ, f, buffer_size=CHUNK)
                f.close()
    return blobs.open_range(sha256, start, stop - 1, chunk_size=CHUNK)


@bp.route("/v1/artifacts/<sha256>", methods=["GET", "HEAD"])
def get_artifact(sha256: str):
    visibility = current_services().store.artifact_visibility(sha256) \
        if SHA256_RE.fullmatch(sha256) else None
    if visibility is None:
        raise ArtifactNotFoundError(f"no artifact with sha256 {sha256[:64]!r}")
    if visibility == "public":
        return _redirect(sha256) or stream_blob(sha256)
    authenticate("reader")  # 401 before anything (even a 304) says more about the bytes
    return stream_blob(sha256, cache_control=PRIVATE_IMMUTABLE)


def _redirect(sha256: str) -> Response | None:
    """With ``MODELDROP_ARTIFACT_REDIRECT=presigned`` and a backend that presigns (S3): a 302
    to a short-lived URL of the bucket, so the bytes travel from the object store. Range and
    If-Range go with the redirected request (clients resend their headers), so resuming works;
    a conditional GET the ETag answers is still a 304 from here. The redirect itself is cached
    privately and for less than the URL lives; the manifest keeps naming this stable URL.
    With ``MODELDROP_ARTIFACT_REDIRECT_BASE_URL`` the URL names a CDN in front of the bucket."""
    services = current_services()
    if services.settings.artifact_redirect != "presigned":
        return None
    if request.if_none_match and request.if_none_match.contains(sha256):
        return None  # stream_blob answers 304 without touching the bucket
    ttl = services.settings.artifact_redirect_ttl
    url = services.blobs.presigned_url(sha256, ttl)
    if url is None:
        return None
    base = services.settings.artifact_redirect_base_url
    if base:  # a CDN in front of the bucket: same path and signature, the CDN's host
        cdn, signed = urlsplit(base), urlsplit(url)
        url = urlunsplit((cdn.scheme, cdn.netloc, cdn.path.rstrip("/") + signed.path,
                          signed.query, ""))
    return Response(status=302, headers={
        "Location": url, "Cache-Control": f"private, max-age={max(0, ttl // 2)}"})
