"""The TUF side of an update: refresh the image repository and cross-check one target.

A fresh ``ngclient.Updater`` is built for every update cycle (an Updater refreshes only
once), always bootstrapped from the root embedded in the app: trusting whatever root
happens to be cached would let a tampered cache widen trust. Newer roots reached through
verified rotations are kept in ``metadata_dir/root_history`` and walked again each cycle.

The manifest ("director") public keys are read from the root the Updater just verified —
``metadata_dir/root.json`` after ``refresh()`` — never from the embedded bytes directly,
so a manifest-key rotation is an ordinary root update.

python-tuf raises its own exceptions; they are translated here, at the boundary, into
SDK errors with stable codes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from ._http import body_chunks, request
from ._manifest import ManifestKeys, check_target_entry, parse_manifest_keys, validate_target_path
from ._types import ClientConfig
from .errors import (
    DeadlineExceededError,
    LocalStorageError,
    ModelDropError,
    NetworkError,
    ProtocolError,
    ServerError,
    TargetNotFoundError,
    TufMetadataExpiredError,
    TufRollbackError,
    TufVerificationError,
)

__all__ = ["TrustCycle"]

_METADATA_CAP = 8 << 20  # bytes; python-tuf applies the per-role caps on top of this


class _SessionFetcher(FetcherInterface):
    """python-tuf fetcher over the SDK's session, with an overall deadline per file.

    python-tuf's own ``RequestsFetcher`` hands its timeout to requests, which applies it
    between bytes, not to the whole download ("timeout is not a time limit on the entire
    response download", https://requests.readthedocs.io/en/latest/user/quickstart/#timeouts),
    so a trickling mirror could stall a refresh forever.
    """

    def __init__(self, session: requests.Session, config: ClientConfig) -> None:
        self._session = session
        self._config = config

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = request(self._session, "GET", url, self._config,
                           headers={"Accept-Encoding": "identity"})
        if response.status_code >= 400:
            response.close()
            raise tuf_errors.DownloadHTTPError(
                f"HTTP {response.status_code} for {url}", response.status_code)
        if response.status_code != 200:
            response.close()
            raise tuf_errors.DownloadError(f"unexpected HTTP {response.status_code} for {url}")
        deadline = time.monotonic() + self._config.metadata_deadline.total_seconds()
        return body_chunks(response, deadline=deadline, max_bytes=_METADATA_CAP,
                           read_timeout=self._config.read_timeout,
                           chunk_bytes=self._config.chunk_bytes, what=f"TUF {url}")


@contextmanager
def _tuf_boundary(what: str) -> Iterator[None]:
    try:
        yield
    except ModelDropError:
        raise
    except tuf_errors.ExpiredMetadataError as e:
        raise TufMetadataExpiredError(f"{what}: {e}") from e
    except tuf_errors.BadVersionNumberError as e:
        raise TufRollbackError(f"{what}: {e}") from e
    except DeserializationError as e:  # not metadata at all: an HTML page, a proxy error
        raise ProtocolError(f"{what}: the server did not answer with TUF metadata") from e
    except tuf_errors.RepositoryError as e:
        raise TufVerificationError(f"{what}: {type(e).__name__}: {e}") from e
    except tuf_errors.DownloadHTTPError as e:
        if e.status_code >= 500:
            raise ServerError(f"{what}: {e}", status=e.status_code) from e
        raise ProtocolError(f"{what}: {e}", status=e.status_code) from e
    except tuf_errors.DownloadLengthMismatchError as e:
        raise TufVerificationError(f"{what}: metadata longer than allowed: {e}") from e
    except tuf_errors.SlowRetrievalError as e:
        raise DeadlineExceededError(f"{what}: {e}") from e
    except tuf_errors.DownloadError as e:
        if isinstance(e.__cause__, ModelDropError):
            raise e.__cause__ from e
        raise NetworkError(f"{what}: {e}") from e
    except OSError as e:
        raise LocalStorageError(f"{what}: cannot write TUF metadata: {e}") from e


class TrustCycle:
    """One verified view of the TUF image repository, for one update cycle."""

    def __init__(self, base_url: str, metadata_dir: Path, trusted_root: bytes,
                 session: requests.Session, config: ClientConfig) -> None:
        self._metadata_dir = metadata_dir
        with _tuf_boundary("TUF bootstrap"):
            metadata_dir.mkdir(parents=True, exist_ok=True)
            self._updater = Updater(
                metadata_dir=str(metadata_dir),
                metadata_base_url=base_url.rstrip("/") + "/tuf/metadata/",
                target_base_url=base_url.rstrip("/") + "/tuf/targets/",
                fetcher=_SessionFetcher(session, config),
                config=UpdaterConfig(app_user_agent=config.user_agent),
                bootstrap=trusted_root,
            )

    def refresh(self) -> None:
        """Run the TUF client workflow: root walk, timestamp, snapshot, targets."""
        with _tuf_boundary("TUF refresh"):
            self._updater.refresh()

    def manifest_keys(self) -> ManifestKeys:
        """The manifest keys from the root verified by :meth:`refresh`."""
        with _tuf_boundary("trusted root"):
            data = (self._metadata_dir / "root.json").read_bytes()
            root = Metadata[Root].from_bytes(data)
        return parse_manifest_keys(root.signed.unrecognized_fields)

    def verified_target(self, path: str) -> TargetFile:
        """The verified targets entry for ``path``.

        Raises:
            UnsafeTargetPathError: the path is unsafe (checked before python-tuf sees it).
            TargetNotFoundError: no such target in the verified targets metadata.
        """
        validate_target_path(path)
        with _tuf_boundary("TUF targets"):
            info = self._updater.get_targetinfo(path)
        if info is None:
            raise TargetNotFoundError(f"{path!r} is not a target in the verified TUF targets")
        return info

    def cross_check(self, path: str, length: int, sha256: str,
                    expect_custom: Mapping[str, Any]) -> TargetFile:
        """Require the TUF entry for ``path`` to agree with the manifest.

        ``expect_custom`` fields (model, version, variant, format, kind) are compared only
        when the TUF entry carries them: ``custom`` is signed by the targets role but
        python-tuf does not interpret it, so this is where it earns its keep.

        Raises:
            TargetNotFoundError, TargetMismatchError, UnsafeTargetPathError.
        """
        info = self.verified_target(path)
        check_target_entry(path, length, sha256, {
            "length": info.length, "hashes": info.hashes,
            "custom": info.custom if isinstance(info.custom, Mapping) else {}}, expect_custom)
        return info
