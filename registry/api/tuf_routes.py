"""The TUF image repository over HTTP. Stored signed bytes are served unchanged; a missing
file is a plain 404 (python-tuf's root walk stops only on 403/404)."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort

from registry.api._util import respond
from registry.services import current_services

bp = Blueprint("tuf", __name__)
METADATA_RE = re.compile(r"^(\d+\.)?(root|targets|snapshot|timestamp)\.json$")
TARGET_FILE_RE = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9._-]+$")


@bp.get("/tuf/metadata/<name>")
def metadata(name: str):
    if not METADATA_RE.fullmatch(name):
        abort(404)
    data = current_services().signing.get_metadata(name)
    if data is None:
        abort(404)
    cache = "no-cache" if name in ("timestamp.json", "root.json") else "public, max-age=60"
    return Response(data, mimetype="application/json", headers={"Cache-Control": cache})


@bp.get("/tuf/targets/<path:target>")
def target(target: str):
    from registry.api.artifacts import stream_blob

    directory, _, filename = target.rpartition("/")
    match = TARGET_FILE_RE.fullmatch(filename)
    if not match or ".." in target.split("/"):
        abort(404)
    sha256 = match.group(1)
    info = current_services().signing.target_info(f"{directory}/{filename[65:]}" if directory else filename[65:])
    if info is None or info.get("hashes", {}).get("sha256") != sha256:
        abort(404)
    return stream_blob(sha256)


@bp.get("/v1/trusted-root")
def trusted_root():
    """The current root, for bootstrapping a client (pin it out of band in production)."""
    return Response(current_services().signing.trusted_root(), mimetype="application/json")


@bp.get("/v1/keys")
def public_keys():
    return respond({"manifest": current_services().signing.manifest_public_keys()})
