"""Every error the SDK raises or records, each with a stable ``code``.

Apps branch on ``code`` (and on ``retryable``), never on message text, so the codes are a
public contract just like the server's. Errors the server reports as problem+json are
rebuilt here by their ``code`` (:func:`error_from_problem`) without importing the server:
the table of server codes is part of the wire contract, not shared code.

Two families matter to an app:

* :class:`UpdateRejectedError` — the update was refused for a security reason (bad
  signature, replayed manifest, hash mismatch...). Retrying the same bytes will not help.
* :class:`TransientError` — network, server or device conditions; the next update cycle
  may succeed and the partial download is kept for resuming.

Either way the installed model stays active: an error describes a failed *update*,
never a lost model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ArtifactTooLargeError",
    "ConditionsNotMetError",
    "DeadlineExceededError",
    "DeltaPatchError",
    "DownloadIncompleteError",
    "HashMismatchError",
    "InstallIdMismatchError",
    "LocalStorageError",
    "ManifestExpiredError",
    "ManifestInvalidError",
    "ManifestKeyMissingError",
    "ManifestSignatureError",
    "ModelDropError",
    "ModelContractError",
    "ModelLoadError",
    "NetworkError",
    "NoModelAvailableError",
    "ProtocolError",
    "ReleaseRollbackError",
    "RemoteError",
    "RulesetExpiredError",
    "RulesetInvalidError",
    "RulesetRollbackError",
    "ServerError",
    "TargetMismatchError",
    "TargetNotFoundError",
    "TransientError",
    "TufMetadataExpiredError",
    "TufRollbackError",
    "TufVerificationError",
    "UnsafeTargetPathError",
    "UpdateRejectedError",
    "error_class_for_code",
    "error_from_problem",
]


class ModelDropError(Exception):
    """Base of every SDK error.

    Attributes:
        code: stable machine-readable code (part of the public contract).
        retryable: whether a later update cycle may succeed without a server change.
        status: HTTP status when the error came from a server response, else None.
        detail: human-readable explanation.
    """

    code = "sdk_error"
    retryable = False

    def __init__(self, detail: str | None = None, *, status: int | None = None,
                 **extra: Any) -> None:
        self.detail = detail or self.__class__.__doc__.strip().splitlines()[0]
        self.status = status
        self.extra = extra
        super().__init__(self.detail)

    def __str__(self) -> str:
        return f"[{self.code}] {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary, for status APIs and logs."""
        out: dict[str, Any] = {"code": self.code, "detail": self.detail,
                               "retryable": self.retryable}
        if self.status is not None:
            out["status"] = self.status
        return out


# --- transient: network, server, device -------------------------------------------

class TransientError(ModelDropError):
    """The update could not finish now; a later cycle may succeed."""

    code = "transient_error"
    retryable = True


class NetworkError(TransientError):
    """The connection failed (refused, reset, timed out, DNS)."""

    code = "network_error"


class DeadlineExceededError(TransientError):
    """The download did not finish within the overall deadline."""

    code = "download_deadline_exceeded"


class DownloadIncompleteError(TransientError):
    """The server closed the connection before sending every byte."""

    code = "download_incomplete"


class ServerError(TransientError):
    """The server answered with a 5xx status and no problem document."""

    code = "server_error"


class ProtocolError(TransientError):
    """The server's answer was not what the wire format promises (e.g. an HTML page)."""

    code = "unexpected_response"


class ConditionsNotMetError(TransientError):
    """The download conditions (Wi-Fi, charging, idle) are not met right now."""

    code = "conditions_not_met"


class LocalStorageError(TransientError):
    """The device could not write the cache or state directory (disk full, permissions)."""

    code = "local_storage_error"


class NoModelAvailableError(ModelDropError):
    """No release targets this device and no model is installed."""

    code = "no_model_available"
    retryable = True


# --- rejected: verification failures ------------------------------------------------

class UpdateRejectedError(ModelDropError):
    """The offered update failed verification and was refused."""

    code = "update_rejected"


class ManifestInvalidError(UpdateRejectedError):
    """The manifest is not a well-formed schema-1 manifest for the requested model."""

    code = "manifest_invalid"


class ManifestSignatureError(UpdateRejectedError):
    """The manifest is not signed by enough trusted manifest keys."""

    code = "manifest_signature_invalid"


class ManifestKeyMissingError(UpdateRejectedError):
    """The verified TUF root carries no usable ``x-modeldrop-manifest`` key field."""

    code = "manifest_key_missing"


class ManifestExpiredError(UpdateRejectedError):
    """The manifest expired (beyond the allowed clock skew)."""

    code = "manifest_expired"
    retryable = True  # a fresh manifest from a healthy server fixes it


class InstallIdMismatchError(UpdateRejectedError):
    """The manifest was issued for another install id."""

    code = "manifest_install_id_mismatch"


class ReleaseRollbackError(UpdateRejectedError):
    """The manifest's release counter is lower than one already seen (replay)."""

    code = "release_counter_rollback"


class RulesetInvalidError(UpdateRejectedError):
    """The ruleset is not a valid schema-1 ruleset of this model and channel."""

    code = "ruleset_invalid"


class RulesetExpiredError(UpdateRejectedError):
    """The ruleset's ``expires_at`` has passed (a frozen mirror or CDN)."""

    code = "ruleset_expired"


class RulesetRollbackError(UpdateRejectedError):
    """The ruleset is older than one this device already used (counter or issue time)."""

    code = "ruleset_rollback"


class UnsafeTargetPathError(UpdateRejectedError):
    """A target path is absolute, has ``..`` or a backslash, or is otherwise unsafe."""

    code = "unsafe_target_path"


class TufVerificationError(UpdateRejectedError):
    """The TUF image repository metadata failed verification."""

    code = "tuf_verification_failed"


class TufRollbackError(TufVerificationError):
    """TUF metadata went back to an older version (rollback or mix-and-match)."""

    code = "tuf_rollback"


class TufMetadataExpiredError(TufVerificationError):
    """TUF metadata is expired (freeze attack or a server that stopped re-signing)."""

    code = "tuf_metadata_expired"
    retryable = True


class TargetNotFoundError(UpdateRejectedError):
    """The manifest names a target the verified TUF targets do not list."""

    code = "target_not_in_tuf"


class TargetMismatchError(UpdateRejectedError):
    """The manifest's length, hash or identity disagree with the TUF targets entry."""

    code = "target_mismatch"


class HashMismatchError(UpdateRejectedError):
    """The downloaded bytes do not hash to the verified sha256."""

    code = "hash_mismatch"
    retryable = True  # the partial is discarded; a clean download may succeed


class ArtifactTooLargeError(UpdateRejectedError):
    """The server sent more bytes than the verified length; the download was stopped."""

    code = "artifact_too_large"


class DeltaPatchError(UpdateRejectedError):
    """A delta patch could not be applied or produced the wrong bytes."""

    code = "delta_failed"


class ModelLoadError(UpdateRejectedError):
    """The verified model failed its load check; the previous model stays active."""

    code = "model_load_failed"


class ModelContractError(ModelLoadError):
    """The model loads, but its tensors differ from the app's ``ModelContract``."""

    code = "model_contract_mismatch"


# --- rebuilt from the server's problem+json ------------------------------------------

class RemoteError(ModelDropError):
    """The server reported a problem (application/problem+json)."""

    code = "remote_error"

    def __init__(self, detail: str | None = None, *, status: int | None = None,
                 code: str | None = None, **extra: Any) -> None:
        super().__init__(detail, status=status, **extra)
        if code:
            self.code = code  # keep the server's code even if this SDK does not know it


def _remote(name: str, code: str, doc: str, retryable: bool = False) -> type[RemoteError]:
    cls = type(name, (RemoteError,), {"code": code, "retryable": retryable, "__doc__": doc})
    cls.__module__ = __name__
    return cls


# The server's codes a device can meet (registry/errors.py is their source of truth; this
# table mirrors the contract, it does not import it).
class ValidationError(RemoteError, ValueError):
    """The request was invalid (raised locally too, before anything is sent)."""

    code = "validation_error"


class InvalidNameError(ValidationError):
    """A model name is not ``[a-z0-9][a-z0-9._-]{0,63}`` (or, checked locally, a channel
    is not ``[a-z0-9-]{1,32}``)."""

    code = "invalid_name"


class InvalidChannelError(ValidationError):
    """The server refused the channel (it must match ``[a-z0-9-]{1,32}``)."""

    code = "invalid_channel"


class InvalidInstallIdError(ValidationError):
    """The install id is not ``[a-z0-9][a-z0-9-]{7,63}`` (checked locally and by the server)."""

    code = "invalid_install_id"


class InvalidDeviceError(ValidationError):
    """The device description is unusable (e.g. a platform other than ios, android, linux)."""

    code = "invalid_device"


class InvalidBucketingError(ValidationError):
    """Experiment weights, coverage or a rollout percentage are out of range."""

    code = "invalid_bucketing"


class InvalidTargetingError(ValidationError):
    """A targeting rule or a ``min_app_version`` does not parse."""

    code = "invalid_targeting"


class RateLimitedError(RemoteError):
    """The server asked this device to slow down (HTTP 429); try again after ``retry_after``
    seconds (from the ``Retry-After`` header or the problem body; None if it gave none)."""

    code = "rate_limited"
    retryable = True

    def __init__(self, detail: str | None = None, *, status: int | None = None,
                 retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(detail, status=status, **extra)
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


NotFoundError = _remote("NotFoundError", "not_found", "Not found.")
ModelNotFoundError = _remote("ModelNotFoundError", "model_not_found", "Model not found.")
ReleaseNotFoundError = _remote("ReleaseNotFoundError", "release_not_found",
                               "Release not found.")
ArtifactNotFoundError = _remote("ArtifactNotFoundError", "artifact_not_found",
                                "Artifact not found.")
RangeNotSatisfiableError = _remote("RangeNotSatisfiableError", "range_not_satisfiable",
                                   "Range not satisfiable.")
AuthenticationError = _remote("AuthenticationError", "unauthenticated",
                              "Authentication required.")
PermissionDeniedError = _remote("PermissionDeniedError", "forbidden", "Insufficient role.")
InternalServerError = _remote("InternalServerError", "internal_error",
                              "Internal server error.", retryable=True)
StorageUnavailableError = _remote("StorageUnavailableError", "storage_error",
                                  "Server storage unavailable.", retryable=True)
StorageFullError = _remote("StorageFullError", "storage_full", "Server storage full.",
                           retryable=True)

__all__ += [
    "ArtifactNotFoundError", "AuthenticationError", "InternalServerError", "InvalidBucketingError",
    "InvalidChannelError", "InvalidDeviceError", "InvalidInstallIdError", "InvalidNameError",
    "InvalidTargetingError",
    "ModelNotFoundError", "NotFoundError", "PermissionDeniedError", "RangeNotSatisfiableError",
    "ReleaseNotFoundError", "StorageUnavailableError", "ValidationError",
    "RateLimitedError", "StorageFullError",
]


def _all_error_classes() -> dict[str, type[ModelDropError]]:
    table: dict[str, type[ModelDropError]] = {}
    stack: list[type[ModelDropError]] = [ModelDropError]
    while stack:
        cls = stack.pop()
        table.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return table


_BY_CODE = _all_error_classes()


def error_class_for_code(code: str) -> type[ModelDropError] | None:
    """The SDK class for a stable ``code``, or None if this SDK does not know it."""
    return _BY_CODE.get(code)


def error_from_problem(problem: Mapping[str, Any], status: int | None = None) -> ModelDropError:
    """Rebuild the error a server reported as ``application/problem+json``.

    Known codes give their own class; an unknown code still keeps that code on a
    :class:`RemoteError`, so newer servers stay understandable to older SDKs. A 5xx
    without a usable code is retryable; a 4xx is not.
    """
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    status = status if status is not None else _int_or_none(problem.get("status"))
    detail = problem.get("detail") or problem.get("title")
    detail = str(detail) if detail is not None else None
    cls = _BY_CODE.get(code or "")
    if cls is RateLimitedError:
        wait = problem.get("retry_after")
        return RateLimitedError(detail, status=status, retry_after=float(wait) if isinstance(
            wait, (int, float)) and not isinstance(wait, bool) and wait >= 0 else None)
    if cls is not None and issubclass(cls, RemoteError):
        return cls(detail, status=status)
    err = RemoteError(detail, status=status, code=code or "remote_error")
    err.retryable = status is not None and (status >= 500 or status in (408, 429))
    return err


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
