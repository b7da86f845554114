"""HTTP API blueprints. Views parse, call one service or store method, and serialise."""

from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from registry.errors import (
    DatabaseUnavailableError,
    HTTPProblem,
    ModelDropError,
    UploadIncompleteError,
    UploadTooLargeError,
)

log = logging.getLogger("modeldrop.api")
PROBLEM = "application/problem+json"


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


def register_api(app: Flask) -> None:
    from registry.api import admin, artifacts, delivery, meta, models, telemetry, tuf_routes
    from registry.uploads import discard_spools

    for module in (meta, models, artifacts, admin, tuf_routes, delivery, telemetry):
        app.register_blueprint(module.bp)

    app.teardown_request(lambda exc: discard_spools())

    @app.errorhandler(ModelDropError)
    def _modeldrop_error(e: ModelDropError) -> Response:
        if e.status >= 500:  # a server fault (signing, storage): the operator needs the line
            log.error("%s on %s %s: %s", e.code, request.method, request.path, e)
        return problem_response(e)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        if isinstance(e, RequestEntityTooLarge):
            return problem_response(UploadTooLargeError("the request body is larger than the upload limit"))
        if isinstance(e, ClientDisconnected):
            return problem_response(UploadIncompleteError("the client disconnected before the upload ended"))
        return problem_response(HTTPProblem(e.code or 500, e.name, e.description))

    from sqlalchemy.exc import InterfaceError, OperationalError

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_down(e: Exception) -> Response:
        log.error("database unavailable on %s %s: %s", request.method, request.path,
                  type(getattr(e, "orig", None) or e).__name__)
        return problem_response(DatabaseUnavailableError(
            "the database is not answering; retry shortly"))

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(ModelDropError("an internal error occurred; see the server log"))
