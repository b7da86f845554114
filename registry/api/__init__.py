"""HTTP API blueprints. Views parse, call one service or store method, and serialise."""

from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import ClientDisconnected

from registry.delivery.errors import DeliveryError
from registry.errors import ModelDropError, UploadIncompleteError, UploadTooLargeError
from registry.signing.errors import SigningError

log = logging.getLogger("modeldrop.api")
PROBLEM = "application/problem+json"


def problem_response(error: ModelDropError) -> Response:
    body = error.to_problem(instance=request.path)
    return Response(json.dumps(body), status=error.status, mimetype=PROBLEM)


def _foreign(code: str, status: int, detail: str) -> ModelDropError:
    """A problem for an error of a package with its own hierarchy (code + status)."""
    error = ModelDropError(detail)
    error.code, error.status = code, status
    error.title = code.replace("_", " ").capitalize()
    return error


def register_api(app: Flask) -> None:
    from registry.api import admin, artifacts, delivery, meta, models, telemetry, tuf_routes
    from registry.uploads import discard_spools

    for module in (meta, models, artifacts, admin, tuf_routes, delivery, telemetry):
        app.register_blueprint(module.bp)

    app.teardown_request(lambda exc: discard_spools())

    @app.errorhandler(ModelDropError)
    def _modeldrop_error(e: ModelDropError) -> Response:
        return problem_response(e)

    @app.errorhandler(DeliveryError)
    def _delivery_error(e: DeliveryError) -> Response:
        return problem_response(_foreign(e.code, e.status, e.message))

    @app.errorhandler(SigningError)
    def _signing_error(e: SigningError) -> Response:
        if e.http_status >= 500:
            log.error("signing failed on %s %s: %s", request.method, request.path, e)
        return problem_response(_foreign(e.code, e.http_status, str(e)))

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        if isinstance(e, RequestEntityTooLarge):
            return problem_response(UploadTooLargeError("the request body is larger than the upload limit"))
        if isinstance(e, ClientDisconnected):
            return problem_response(UploadIncompleteError("the client disconnected before the upload ended"))
        err = ModelDropError(e.description)
        err.status, err.title = e.code or 500, e.name
        err.code = (e.name or "error").lower().replace(" ", "_")
        return problem_response(err)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        if isinstance(e, ModelDropError):
            return problem_response(e)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(ModelDropError("an internal error occurred; see the server log"))
