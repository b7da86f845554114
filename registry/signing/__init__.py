"""Keys, the TUF image repository, and signed manifests.

Everything a device trusts is rooted here: the TUF root lists the keys for targets,
snapshot and timestamp, and carries the manifest (director) key in a signed extension
field. See docs/security.md for the threat model and operations, docs/wire-format.md
for the contract with clients.

The package is a library with small seams — a :class:`MetadataStore` for where signed
bytes live and a ``lock`` callable for cross-process exclusion — so the application can
back it with its database and its own locking.
"""

from ._keys import KEY_ROLES, KeyStore
from ._manifest import MANIFEST_EXTENSION, canonical_manifest_bytes, verify_manifest
from ._policy import ExpiryPolicy
from ._repository import ROTATABLE_ROLES, ImageRepository
from ._store import DirMetadataStore, MetadataStore, is_metadata_name
from ._targets import TargetSpec, consistent_target_name, validate_target_path, variant_target_path
from .errors import (
    InvalidManifestError,
    InvalidMetadataNameError,
    InvalidTargetError,
    InvalidTargetPathError,
    KeyStoreError,
    ManifestSignatureError,
    MetadataInconsistentError,
    MissingSigningKeyError,
    NotBootstrappedError,
    SigningError,
    TargetNotFoundError,
    UnknownRoleError,
)

__all__ = [
    "KEY_ROLES",
    "MANIFEST_EXTENSION",
    "ROTATABLE_ROLES",
    "DirMetadataStore",
    "ExpiryPolicy",
    "ImageRepository",
    "InvalidManifestError",
    "InvalidMetadataNameError",
    "InvalidTargetError",
    "InvalidTargetPathError",
    "KeyStore",
    "KeyStoreError",
    "ManifestSignatureError",
    "MetadataInconsistentError",
    "MetadataStore",
    "MissingSigningKeyError",
    "NotBootstrappedError",
    "SigningError",
    "TargetNotFoundError",
    "TargetSpec",
    "UnknownRoleError",
    "canonical_manifest_bytes",
    "consistent_target_name",
    "is_metadata_name",
    "validate_target_path",
    "variant_target_path",
    "verify_manifest",
]
