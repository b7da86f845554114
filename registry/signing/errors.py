"""Errors raised by the signing package.

Every error carries a stable ``code`` (what API clients and the SDK match on) and the
HTTP status the API layer should answer with, so the integrator can turn any of them
into an RFC 9457 problem+json response from one table instead of guessing.
Messages never contain key material.
"""

from __future__ import annotations

__all__ = [
    "InvalidManifestError",
    "ManifestSignatureError",
    "InvalidMetadataNameError",
    "InvalidTargetError",
    "InvalidTargetPathError",
    "KeyStoreError",
    "MetadataInconsistentError",
    "MissingSigningKeyError",
    "NotBootstrappedError",
    "SigningError",
    "TargetNotFoundError",
    "UnknownRoleError",
]


class SigningError(Exception):
    """Base of every error raised by :mod:`registry.signing`."""

    code: str = "signing_error"
    http_status: int = 500


class InvalidTargetPathError(SigningError):
    """A TUF target path is not a clean relative POSIX path."""

    code = "invalid_target_path"
    http_status = 400


class InvalidTargetError(SigningError):
    """A target's length, sha256 or custom field is malformed."""

    code = "invalid_target"
    http_status = 400


class TargetNotFoundError(SigningError):
    """A target to remove is not in the current targets metadata."""

    code = "target_not_found"
    http_status = 404


class UnknownRoleError(SigningError):
    """A role name is not one this repository knows (or cannot rotate)."""

    code = "unknown_role"
    http_status = 400


class InvalidManifestError(SigningError):
    """A manifest document cannot be canonicalised (e.g. it holds floats)."""

    code = "invalid_manifest"
    http_status = 500


class ManifestSignatureError(SigningError):
    """A signed manifest does not carry enough valid signatures from the manifest keys."""

    code = "manifest_signature_invalid"
    http_status = 400


class InvalidMetadataNameError(SigningError):
    """A metadata file name is not one of the names TUF clients ask for."""

    code = "invalid_metadata_name"
    http_status = 404


class NotBootstrappedError(SigningError):
    """The repository has no root yet: call ``bootstrap()`` first."""

    code = "repository_not_initialized"
    http_status = 503


class MetadataInconsistentError(SigningError):
    """Stored metadata is missing or does not parse where the chain says it should."""

    code = "metadata_inconsistent"
    http_status = 500


class MissingSigningKeyError(SigningError):
    """No private key on this server matches a key the root names for a role.

    Expected when a role's key is kept offline; the operation needs that key.
    """

    code = "missing_signing_key"
    http_status = 503


class KeyStoreError(SigningError):
    """The key directory cannot be read or written, or a key file is unusable."""

    code = "key_store_error"
    http_status = 500
