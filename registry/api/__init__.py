"""HTTP API blueprints. Views parse, call one service or store method, and serialise."""

from __future__ import annotations

import errno
import logging
import socket

from flask import Flask, Response, json, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter

from registry.errors import (
    DatabaseUnavailableError,
    HTTPProblem,
    ModelDropError,
    StorageFullError,
    UploadIncompleteError,
    UploadTooLargeError,
)

log = logging.getLogger("modeldrop.api")
PROBLEM = "application/problem+json"


UNREAD_BODY_BYTES = 1 << 20  # an unread body above this is not drained after an early error
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# SQLSTATE 53100 disk_full, 53200 out_of_memory, 53300 too_many_connections are class 53
# ("insufficient resources"); SQLite says SQLITE_FULL as "database or disk is full".
_PG_FULL = ("53100",)


def storage_full_cause(exc: BaseException) -> BaseException | None:
    """The disk-full or database-full error in ``exc``'s chain (an upload's ENOSPC, SQLite's
    SQLITE_FULL, PostgreSQL's disk_full), if that is what went wrong."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return e
        if getattr(e, "sqlite_errorname", None) == "SQLITE_FULL" or "database or disk is full" in str(e):
            return e
        if getattr(e, "sqlstate", None) in _PG_FULL:
            return e
        e = e.__cause__ or e.__context__
    return None


def problem_response(error: ModelDropError) -> Response:
    from registry.observability import request_id

    body = error.to_problem(instance=request.path)
    if request_id():
        body["request_id"] = request_id()
    resp = Response(json.dumps(body), status=error.status, mimetype=PROBLEM)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


class Int64Converter(IntegerConverter):
    """``<int:...>`` in every route (API and dashboard) matches only what a 64-bit column
    holds: a version or token id past 2^63-1 is a 404, not an overflow in the database.
    Longer than 19 digits never matches any rule (so no method's rule half-matches: 404, not 405)."""

    regex = r"\d{1,19}"

    def __init__(self, map, *args, **kwargs) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


def register_api(app: Flask) -> None:
    from registry.api import admin, artifacts, delivery, meta, models, telemetry, tuf_routes
    from registry.upload_stream import discard_spools

    app.url_map.converters["int"] = Int64Converter  # before any route is added

    for module in (meta, models, artifacts, admin, tuf_routes, delivery, telemetry):
        app.register_blueprint(module.bp)

    app.teardown_request(lambda exc: discard_spools())

    @app.after_request
    def _refuse_unread_body(resp: Response) -> Response:
        """An error answered before the body was read (role, name, declared size: all known
        from the URL and headers) does not then swallow the upload: the connection closes and
        its read side is shut, so the server's drain-before-close (werkzeug's reads up to 10 GB
        to let the client see the answer) stops at once and the client's send fails."""
        if resp.status_code >= 400 and (request.content_length or 0) > UNREAD_BODY_BYTES:
            # request.stream is made on first use (and raises 413 for an oversized body):
            # never made means never read.
            stream = request.__dict__.get("stream")
            if stream is None or not getattr(stream, "is_exhausted", True):
                resp.headers["Connection"] = "close"
                sock = request.environ.get("werkzeug.socket") or request.environ.get("gunicorn.socket")
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass
        return resp

    @app.errorhandler(ModelDropError)
    def _modeldrop_error(e: ModelDropError) -> Response:
        if e.status >= 500 and not isinstance(e, StorageFullError) and storage_full_cause(e):
            return _full(e)
        if e.status >= 500:  # a server fault (signing, storage): the operator needs the line
            log.error("%s on %s %s: %s", e.code, request.method, request.path, e)
        return problem_response(e)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        if e.response is not None:  # a response made for it (the rate limiter's 429 problem)
            return e.response
        if isinstance(e, RequestEntityTooLarge):
            return problem_response(UploadTooLargeError("the request body is larger than the upload limit"))
        if isinstance(e, ClientDisconnected):
            return problem_response(UploadIncompleteError("the client disconnected before the upload ended"))
        resp = problem_response(HTTPProblem(e.code or 500, e.name, e.description))
        if isinstance(e, MethodNotAllowed) and e.valid_methods:  # RFC 9110: a 405 says what is
            resp.headers["Allow"] = ", ".join(sorted(e.valid_methods))
        return resp

    def _full(e: BaseException) -> Response:
        log.error("storage full on %s %s: %s", request.method, request.path, storage_full_cause(e))
        return problem_response(StorageFullError(
            "the server's disk or database is full, so this request was not carried out; "
            "retry once the operator has made room"))

    from sqlalchemy.exc import InterfaceError, OperationalError

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_down(e: Exception) -> Response:
        if storage_full_cause(e) is not None:  # SQLite's "database or disk is full"
            return _full(e)
        log.error("database unavailable on %s %s: %s", request.method, request.path,
                  type(getattr(e, "orig", None) or e).__name__)
        return problem_response(DatabaseUnavailableError(
            "the database is not answering; retry shortly"))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        if storage_full_cause(e) is not None:
            return _full(e)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(ModelDropError("an internal error occurred; see the server log"))
