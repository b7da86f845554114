"""Model uploads: streamed to the blob staging area, hashed in the same pass, size-limited.

Werkzeug's multipart parser writes each file part into the object returned by
``UploadRequest._get_file_stream``; ours hashes as it writes and refuses to grow past the
limit, so memory stays flat whatever the upload size, and the bytes are read exactly once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from flask import Request, g

from registry.errors import (
    EmptyFileError,
    InvalidMetadataError,
    MissingFileError,
    UnsupportedFormatError,
    UploadTooLargeError,
)
from registry.schemas import VersionMetadata, parse_as
from registry.services import current_services

# Longest suffix first: ".mlpackage.zip" is a zipped Core ML package, any other ".zip" a SavedModel.
SOURCE_EXTENSIONS = {".mlpackage.zip": "mlpackage", ".tflite": "tflite", ".mlmodel": "mlmodel",
                     ".keras": "keras", ".h5": "h5", ".zip": "zip", ".pt2": "pt2", ".pt": "pt"}
# A provided artifact's format -> what it must be (the upload refuses anything else).
PROVIDED_FORMATS = {"tflite": "a TFLite flatbuffer (file identifier TFL3)",
                    "mlpackage": "a zipped Core ML package (<name>.mlpackage/Manifest.json inside)",
                    "mlmodel": "a Core ML .mlmodel (a protobuf Model, not a zip)"}
MAX_PACKAGE_ENTRIES = 10_000  # members of an uploaded .mlpackage zip
# Formats that are zip archives by construction: anything else is refused at upload.
_ZIP_FORMATS = {"pt2": "a torch.export ExportedProgram (torch.export.save)",
                "pt": "a TorchScript module (torch.jit.save)"}
_REFUSED_EXTENSIONS = {
    ".onnx": "ONNX is not converted here: coremltools 9 does not read ONNX, and onnx2tf needs Python 3.12 "
             "and pins versions that conflict with the other converters; export from PyTorch with "
             "torch.export.save (.pt2) instead, or convert the model yourself and push the .tflite "
             "(or a zipped .mlpackage)",
    ".pth": "a .pth file is usually a pickled state_dict or module, which carries no graph: save the model "
            "with torch.export.save (.pt2) or torch.jit.save (.pt)",
}


class HashingSpool:
    """A write-only temp file that hashes what it receives and enforces a byte limit."""

    def __init__(self, directory: Path, limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "w+b")
        self._hash = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLargeError(f"the file is larger than the limit of {self.limit} bytes",
                                      limit=self.limit)
        self._hash.update(data)
        return self._file.write(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    # werkzeug calls these on file streams
    def seek(self, *args: Any) -> int:
        return self._file.seek(*args)

    def read(self, *args: Any) -> bytes:
        return self._file.read(*args)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class UploadRequest(Request):
    """Request whose multipart file parts go straight into ``HashingSpool`` files."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        if filename:
            # A format refused whatever the bytes (.onnx) is answered from the part's header,
            # before its body is read (the unread rest of the request is then refused too).
            refuse_known_extension(filename)
        services = current_services()
        limit = services.settings.max_upload_bytes
        spool = HashingSpool(services.blobs.staging_dir, limit)
        spools = g.setdefault("upload_spools", [])
        spools.append(spool)
        return spool


def discard_spools() -> None:
    """Teardown: whatever was not adopted by the blob store is removed (hang-ups, errors)."""
    for spool in g.pop("upload_spools", []):
        spool.discard()


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """Validate the ``metadata`` form field; the 400 names the offending field."""
    if raw is None or not raw.strip():
        data: Any = {}
    else:
        from registry.api._util import loads_strict  # depth, NaN and 64-bit checks

        data = loads_strict(raw, field="metadata", error=InvalidMetadataError,
                            max_bytes=current_services().settings.max_metadata_bytes)
    if not isinstance(data, dict):
        raise InvalidMetadataError("metadata must be a JSON object", field="metadata")
    parsed = parse_as(VersionMetadata, data, InvalidMetadataError, "metadata field")
    return parsed.model_dump(exclude_none=False)


def refuse_known_extension(filename: str, field: str = "file") -> None:
    """400 ``unsupported_format`` with the reason for a file type that is never accepted."""
    lower = (filename or "").lower()
    for ext, why in _REFUSED_EXTENSIONS.items():
        if lower.endswith(ext):
            raise UnsupportedFormatError(f"unsupported model file {filename!r}: {why}", field=field)


def source_format(filename: str) -> str:
    lower = (filename or "").lower()
    for ext, fmt in SOURCE_EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    refuse_known_extension(filename)
    raise UnsupportedFormatError(
        f"unsupported model file {filename!r}: expected .keras, .h5, a SavedModel directory as .zip, "
        "a torch.export program (.pt2), TorchScript (.pt), or your own conversion as .tflite, "
        "a zipped .mlpackage (.mlpackage.zip) or .mlmodel",
        field="file")


def check_container(fmt: str, path: Path, filename: str, field: str = "file",
                    max_expanded: int | None = None) -> None:
    """Refuse, before anything is stored, a file that cannot be what its extension claims.

    Only the container is checked here (the web process never opens a model): a ``.pt2``
    or ``.pt`` must be a zip archive (a bare pickle from ``torch.save(model)`` is not).
    Whether it really is a torch program is learnt in the sandbox, where a mismatch fails
    the job with the loader's reason. An engineer's own artifact gets header checks only
    (``_provided_header_problem``): a ``.tflite`` carries ``TFL3``, an ``.mlmodel`` starts like
    a protobuf ``Model`` and is not a zip, a ``.mlpackage.zip`` lists exactly one
    ``<name>.mlpackage/Manifest.json`` and no unsafe member path (and, with ``max_expanded``,
    declares no more than that many bytes once extracted: a zip bomb refused from its
    central directory).
    """
    import zipfile

    if fmt in _ZIP_FORMATS and not zipfile.is_zipfile(path):
        raise UnsupportedFormatError(
            f"{filename!r} is not {_ZIP_FORMATS[fmt]}: that format is a zip archive and this file is not one",
            field="file")
    if fmt in PROVIDED_FORMATS:
        why = _provided_header_problem(fmt, path, max_expanded)
        if why:
            raise UnsupportedFormatError(f"{filename!r} is not {PROVIDED_FORMATS[fmt]}: {why}", field=field)


def _provided_header_problem(fmt: str, path: Path, max_expanded: int | None = None) -> str | None:
    """Cheap checks on an engineer's own artifact; None when it may be what it claims.

    Only headers and (for a zip) the member names are read: whether the flatbuffer or the
    protobuf really parses is learnt in the sandbox (docs/security.md).
    """
    import zipfile
    from pathlib import PurePosixPath

    with open(path, "rb") as fh:
        head = fh.read(8)
    if fmt == "tflite":
        # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4-8.
        return None if head[4:8] == b"TFL3" else "it does not carry the TFLite file identifier TFL3"
    if fmt == "mlmodel":
        if head[:2] == b"PK":
            return "it is a zip archive; a zipped .mlpackage must be named .mlpackage.zip"
        # A serialised Model starts with field 1 (specificationVersion) as a varint: byte 0x08.
        return None if head[:1] == b"\x08" else "it does not start like a Core ML Model protobuf"
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return "it is not a zip archive"
    if len(infos) > MAX_PACKAGE_ENTRIES:
        return f"it has {len(infos)} members (at most {MAX_PACKAGE_ENTRIES})"
    manifests = []
    for info in infos:
        name = info.filename
        posix = PurePosixPath(name.replace("\\", "/"))
        if (name.startswith(("/", "\\")) or ".." in posix.parts
                or (posix.parts and ":" in posix.parts[0])):
            return f"it has an unsafe member path {name!r}"
        if len(posix.parts) == 2 and posix.parts[1] == "Manifest.json" and posix.parts[0].endswith(".mlpackage"):
            manifests.append(name)
    if len(manifests) != 1:
        return f"it must hold exactly one <name>.mlpackage/Manifest.json; found {len(manifests)}"
    declared = sum(info.file_size for info in infos)
    if max_expanded is not None and declared > max_expanded:
        # The sandbox's extraction checks the real sizes again while it streams.
        return f"its members declare {declared} bytes once extracted (at most {max_expanded})"
    return None


def take_spool(file_storage, field: str) -> HashingSpool:
    """The finished spool behind a parsed file part; refuses a missing or empty one."""
    if file_storage is None or not getattr(file_storage, "filename", None):
        raise MissingFileError(f"the multipart field {field!r} with a file is required", field=field)
    spool = file_storage.stream
    if not isinstance(spool, HashingSpool):  # pragma: no cover - defensive: parser changed
        raise MissingFileError(f"the field {field!r} was not received as a file", field=field)
    spool.finish()
    if spool.size == 0:
        raise EmptyFileError(f"the file in {field!r} is empty", field=field)
    return spool
