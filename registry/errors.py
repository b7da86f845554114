"""One error hierarchy for the server, each with a stable code and HTTP status.

Every error the server reports is a ``ModelDropError``: the ones here, and those of the
packages with their own errors module (``registry.delivery.errors``, ``registry.signing.errors``,
``registry.telemetry.errors``, ``registry.convert.catalog.ConversionError``), which subclass it.
Each class states its ``code``, ``status`` and ``title`` in one line; the API turns any of them
into problem+json with one handler. Clients (the CLI and the SDK) rebuild the same error from
the problem+json body by its ``code``; the codes are a public contract and never change meaning.
This module imports only the standard library: the converter process imports it too.
"""

from __future__ import annotations

from typing import Any


class ModelDropError(Exception):
    """Base of every error the server reports to a client."""

    code = "internal_error"
    status = 500
    title = "Internal server error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """RFC 9457 problem document (``application/problem+json``)."""
        body: dict[str, Any] = {
            "type": f"https://modeldrop.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class HTTPProblem(ModelDropError):
    """An HTTP error werkzeug raised (404 route, 405 method): its status, its name as the code."""

    def __init__(self, status: int, name: str | None, detail: str | None) -> None:
        super().__init__(detail)
        self.status, self.title = status, name or self.title
        self.code = (name or "error").lower().replace(" ", "_")


class ValidationError(ModelDropError):
    code, status, title = "validation_error", 400, "Invalid request"

    def __init__(self, detail: str, field: str | None = None, **extra: Any) -> None:
        if field is not None:
            extra["field"] = field
        super().__init__(detail, **extra)


class InvalidNameError(ValidationError):
    code, title = "invalid_name", "Invalid name"


class InvalidMetadataError(ValidationError):
    code, title = "invalid_metadata", "Invalid metadata"


class MissingFileError(ValidationError):
    code, title = "missing_file", "Missing file"


class EmptyFileError(ValidationError):
    code, title = "empty_file", "Empty file"


class UnsupportedFormatError(ValidationError):
    code, title = "unsupported_format", "Unsupported model format"


class InvalidRangeError(ModelDropError):
    code, status, title = "range_not_satisfiable", 416, "Range not satisfiable"


class AuthenticationError(ModelDropError):
    code, status, title = "unauthenticated", 401, "Authentication required"


class PermissionDeniedError(ModelDropError):
    code, status, title = "forbidden", 403, "Insufficient role"


class NotFoundError(ModelDropError):
    code, status, title = "not_found", 404, "Not found"


class ModelNotFoundError(NotFoundError):
    code, title = "model_not_found", "Model not found"


class VersionNotFoundError(NotFoundError):
    code, title = "version_not_found", "Version not found"


class ArtifactNotFoundError(NotFoundError):
    code, title = "artifact_not_found", "Artifact not found"


class JobNotFoundError(NotFoundError):
    code, title = "job_not_found", "Job not found"


class ReleaseNotFoundError(NotFoundError):
    code, title = "release_not_found", "Release not found"


class ExperimentNotFoundError(NotFoundError):
    code, title = "experiment_not_found", "Experiment not found"


class ConflictError(ModelDropError):
    code, status, title = "conflict", 409, "Conflict"


class LastAdminTokenError(ConflictError):
    code, title = "last_admin_token", "Cannot revoke the last admin token"


class VersionConflictError(ConflictError):
    code, title = "version_conflict", "Version already exists with different content"


class VersionFailedError(ConflictError):
    code, title = "version_failed", "Version failed conversion: retry it"


class VersionNotFailedError(ConflictError):
    code, title = "version_not_failed", "Only a failed conversion can be retried"


class UploadTooLargeError(ModelDropError):
    code, status, title = "upload_too_large", 413, "Upload too large"


class UploadIncompleteError(ModelDropError):
    code, status, title = "upload_incomplete", 400, "Upload incomplete"


class StorageError(ModelDropError):
    code, status, title = "storage_error", 503, "Storage unavailable"


class StorageFullError(StorageError):
    """The disk or the database is full: nothing of the request was kept; retry once the
    operator has made room (docs/reliability.md)."""

    code, title = "storage_full", "Storage full"


class BodyTooLargeError(ModelDropError):
    code, status, title = "body_too_large", 413, "Request body too large"


class DatabaseUnavailableError(ModelDropError):
    """The database did not answer (a restart, a failover, a dropped connection): nothing
    about the request was wrong, so it may be sent again after ``Retry-After``; the pool
    reconnects by itself (``pool_pre_ping``)."""

    code, status, title = "database_unavailable", 503, "Database unavailable"
    retry_after = 2  # seconds


class RateLimitedError(ModelDropError):
    """Too many requests (or telemetry events) from one token, client IP or install id.

    ``retry_after`` (seconds) becomes the ``Retry-After`` header and a body field."""

    code, status, title = "rate_limited", 429, "Too many requests"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=max(1, int(retry_after)), **extra)
        self.retry_after = max(1, int(retry_after))


class UnsupportedMediaTypeError(ModelDropError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"


# -- delivery ---------------------------------------------------------------------------

class InvalidChannelError(ValidationError):
    code, title = "invalid_channel", "Invalid channel"


class InvalidExperimentError(ValidationError):
    code, title = "invalid_experiment", "Invalid experiment"


class UnknownArmError(ValidationError):
    code, title = "unknown_arm", "Unknown experiment arm"


class ReleasePausedError(ConflictError):
    code, title = "release_paused", "Release is paused"


class NothingToRollBackError(ConflictError):
    code, title = "nothing_to_roll_back", "Nothing to roll back to"


class VersionNotServableError(ConflictError):
    code, title = "version_not_servable", "Version cannot be served"


class ExperimentConflictError(ConflictError):
    code, title = "experiment_conflict", "Experiment conflict"
