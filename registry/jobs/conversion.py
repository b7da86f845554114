"""One conversion through the sandbox: stage inputs, run the converter, believe nothing.

``SandboxedConversion`` is what the job runner uses (it stages the blobs itself);
``convert_file`` is the same path for a file on disk (tests and benchmarks). Both return
the catalogue's ``VariantResult`` list with artifacts copied out of the sandbox and
re-hashed, or raise ``ConversionError`` with a scrubbed message and a stable ``code``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from registry.config import Settings
from registry.convert.catalog import ATTACHED_VARIANT_NAMES, ConversionError, VariantResult, validate_variants
from registry.convert.confined import REQUEST_NAME
from registry.jobs import results as checks
from registry.jobs.sandbox import JobDirs, Sandbox, SandboxUnavailableError

log = logging.getLogger("modeldrop.jobs")

ProgressFn = Callable[[int, int, str], None]
SOURCE_CODES = ("unsafe_model", "upload_too_large", "resource_limit")


class SandboxedConversionError(ConversionError):
    """A conversion that ended without usable results; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def work_cap_bytes(settings: Settings, upload_bytes: int, variants: int) -> int:
    """Disk the converter may use: the expanded source, its SavedModel export and every
    variant with the intermediates Core ML keeps, each bounded by the work factor."""
    return int(settings.convert_work_factor * upload_bytes * (2 + variants)) + (256 << 20)


def extract_budget(settings: Settings, upload_bytes: int) -> int:
    """Bytes an uploaded SavedModel zip may expand to (also the per-file size limit)."""
    return int(settings.convert_work_factor * upload_bytes) + (64 << 20)


class SandboxedConversion:
    """A job directory under ``root`` and the sandbox that converts in it."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.sandbox = Sandbox(settings)
        self.dirs = JobDirs(Path(root).resolve())  # the sandbox runs elsewhere: no relative paths
        self.sandbox.prepare(self.dirs)

    @property
    def input_dir(self) -> Path:
        return self.dirs.input

    def run(self, source_name: str, *, eval_name: str | None = None, variants: list[str] | None = None,
            threshold_pp: float | None = None, progress: ProgressFn | None = None,
            declared: dict | None = None, max_relative_rmse: float | None = None,
            attached: list[tuple[str, str]] | None = None) -> list[VariantResult]:
        """Convert ``input_dir/source_name``; the caller has put the upload (and eval set) there.

        ``declared`` is the metadata's ``{"input": [...], "output": [...]}`` (checked against
        the model inside the sandbox); ``max_relative_rmse`` the regression outputs' bound
        (default: the setting); ``attached`` the engineer's own artifacts as (variant, file
        name in ``input_dir``), each measured against the source and reported after the
        converted variants."""
        settings, dirs = self.settings, self.dirs
        names = validate_variants(variants, allow_provided=True)
        attached = list(attached or [])
        if any(variant not in ATTACHED_VARIANT_NAMES for variant, _ in attached):
            raise ValueError(f"attached artifacts are variants {', '.join(ATTACHED_VARIANT_NAMES)}")
        files = [source_name, eval_name, *(file for _, file in attached)]
        upload_bytes = sum((dirs.input / n).stat().st_size for n in files if n)
        budget = extract_budget(settings, upload_bytes)
        request = {"source": source_name, "eval": eval_name, "variants": names,
                   "attached": [{"variant": variant, "file": file} for variant, file in attached],
                   "threshold_pp": float(settings.accuracy_drop_threshold_pp if threshold_pp is None
                                         else threshold_pp),
                   "latency_runs": settings.latency_runs, "max_parallel": settings.convert_max_parallel or None,
                   "max_extract_bytes": budget, "check_ops": settings.convert_op_check,
                   "declared": _declared(declared),
                   "max_relative_rmse": float(settings.max_relative_rmse if max_relative_rmse is None
                                              else max_relative_rmse)}
        (dirs.input / REQUEST_NAME).write_text(json.dumps(request))
        reported = names + [variant for variant, _ in attached]
        for p in dirs.input.iterdir():
            os.chmod(p, 0o644)

        def on_message(message: dict) -> None:
            done, name = message.get("done"), message.get("variant")
            if (progress is not None and isinstance(done, int) and not isinstance(done, bool)
                    and 0 <= done <= len(reported) and name in reported):
                progress(done, len(reported), name)

        cap = work_cap_bytes(settings, upload_bytes, len(reported))
        try:
            outcome = self.sandbox.run(dirs, "registry.convert.confined", [str(dirs.input), str(dirs.work)],
                                       file_bytes=budget, timeout=settings.convert_timeout,
                                       on_message=on_message, work_cap_bytes=cap)
        except SandboxUnavailableError as e:
            raise SandboxedConversionError("sandbox_unavailable", f"sandbox_unavailable: {e}") from e
        if outcome.stderr_tail.strip():
            log.info("converter output (tail):\n%s", outcome.stderr_tail)
        if outcome.timed_out:
            raise SandboxedConversionError(
                "timeout", f"timeout: the conversion did not finish within {settings.convert_timeout} s "
                           "(MODELDROP_CONVERT_TIMEOUT) and was stopped")
        if outcome.over_disk:
            raise SandboxedConversionError(
                "upload_too_large", f"upload_too_large: the conversion's work directory grew beyond {cap} bytes "
                                    "(MODELDROP_CONVERT_WORK_FACTOR) and was stopped")
        try:
            document = checks.load_result(dirs.work)
        except checks.InvalidResultError as e:
            raise SandboxedConversionError(
                "converter_crashed", f"converter_crashed: {e}; {exit_reason(outcome.returncode)}") from e
        if document.get("error") is not None:
            code = document.get("code")
            code = code if isinstance(code, str) and code.isidentifier() and len(code) < 40 else "conversion_failed"
            message = checks.scrub(document["error"], dirs.work)
            if code in SOURCE_CODES and not message.startswith(code):
                message = f"{code}: {message}"
            raise SandboxedConversionError(code, message)
        return checks.accept_variants(document, reported, dirs.work, dirs.accepted,
                                      max_artifact_bytes=max(budget, 4 * upload_bytes + (256 << 20)))


def _declared(declared: dict | None) -> dict:
    """The declared signature lists as plain JSON (TensorSignature dicts or models)."""
    out = {}
    for key in ("input", "output"):
        entries = []
        for entry in (declared or {}).get(key) or []:
            entries.append(entry.model_dump() if hasattr(entry, "model_dump") else dict(entry))
        out[key] = entries
    return out


def convert_file(settings: Settings, source: Path, root: Path, *, eval_path: Path | None = None,
                 variants: list[str] | None = None, threshold_pp: float | None = None,
                 progress: ProgressFn | None = None, declared: dict | None = None,
                 max_relative_rmse: float | None = None) -> list[VariantResult]:
    """The job path for a file on disk: what ``registry.convert.convert_version`` does,
    but in the sandbox, with the worker's checks on what comes back."""
    names = validate_variants(variants, allow_provided=True)  # a ValueError before anything is copied
    conversion = SandboxedConversion(settings, root)
    lower = Path(source).name.lower()
    source_name = "source.mlpackage" if lower.endswith(".mlpackage.zip") else "source" + Path(source).suffix.lower()
    shutil.copyfile(source, conversion.input_dir / source_name)
    eval_name = None
    if eval_path is not None:
        eval_name = "eval.npz"
        shutil.copyfile(eval_path, conversion.input_dir / eval_name)
    return conversion.run(source_name, eval_name=eval_name, variants=names, threshold_pp=threshold_pp,
                          progress=progress, declared=declared, max_relative_rmse=max_relative_rmse)


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "it did not exit"
    if returncode < 0 or returncode > 128:
        number = -returncode if returncode < 0 else returncode - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = {"SIGKILL": "killed, e.g. for memory", "SIGXCPU": "CPU time limit", "SIGXFSZ": "file size limit",
                "SIGSEGV": "crashed", "SIGABRT": "aborted, often out of memory"}.get(name, "")
        return f"it ended by {name}{', ' + hint if hint else ''}"
    return f"it exited with status {returncode}"
