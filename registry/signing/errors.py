"""Errors raised by the signing package, in the server's one hierarchy (``registry.errors``).

Each has the stable ``code`` and HTTP ``status`` the API layer answers with.
Messages never contain key material.
"""

from __future__ import annotations

from registry.errors import ModelDropError

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


class SigningError(ModelDropError):
    """Base of every error raised by :mod:`registry.signing`."""

    code, status, title = "signing_error", 500, "Signing error"


class InvalidTargetPathError(SigningError):
    """A TUF target path is not a clean relative POSIX path."""

    code, status, title = "invalid_target_path", 400, "Invalid target path"


class InvalidTargetError(SigningError):
    """A target's length, sha256 or custom field is malformed."""

    code, status, title = "invalid_target", 400, "Invalid target"


class TargetNotFoundError(SigningError):
    """A target to remove is not in the current targets metadata."""

    code, status, title = "target_not_found", 404, "Target not found"


class UnknownRoleError(SigningError):
    """A role name is not one this repository knows (or cannot rotate)."""

    code, status, title = "unknown_role", 400, "Unknown role"


class InvalidManifestError(SigningError):
    """A manifest document cannot be canonicalised (e.g. it holds floats)."""

    code, status, title = "invalid_manifest", 500, "Invalid manifest"


class ManifestSignatureError(SigningError):
    """A signed manifest does not carry enough valid signatures from the manifest keys."""

    code, status, title = "manifest_signature_invalid", 400, "Manifest signature invalid"


class InvalidMetadataNameError(SigningError):
    """A metadata file name is not one of the names TUF clients ask for."""

    code, status, title = "invalid_metadata_name", 404, "Invalid metadata name"


class NotBootstrappedError(SigningError):
    """The repository has no root yet: call ``bootstrap()`` first."""

    code, status, title = "repository_not_initialized", 503, "Repository not initialized"


class MetadataInconsistentError(SigningError):
    """Stored metadata is missing or does not parse where the chain says it should."""

    code, status, title = "metadata_inconsistent", 500, "Metadata inconsistent"


class MissingSigningKeyError(SigningError):
    """No private key on this server matches a key the root names for a role.

    Expected when a role's key is kept offline; the operation needs that key.
    """

    code, status, title = "missing_signing_key", 503, "Missing signing key"


class KeyStoreError(SigningError):
    """The key directory cannot be read or written, or a key file is unusable."""

    code, status, title = "key_store_error", 500, "Key store error"
