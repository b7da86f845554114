"""Orchestration: one uploaded version in, one measured VariantResult per variant out.

The parent loads the source once, exports the SavedModel once and computes the
reference outputs once; variants then build in a pool of *spawned* processes (forking
a process that has TensorFlow loaded can hang). Measurements stay in the parent:
fidelity as each variant arrives, and latency only once no conversion is running, so
that the timings are not taken on a CPU shared with a converter.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from . import _coreml, _fidelity, _signature, _tasks, _tflite
from ._evalset import EvalSet, load_eval_set, synthetic_eval_set
from ._source import MAX_SAVEDMODEL_BYTES, ModelSignature, check_declared, load_source
from ._tasks import ConvertTask, TaskOutcome, describe_error, run_task
from .catalog import VARIANTS, ConversionError, VariantResult, validate_variants

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
DEFAULT_MAX_RELATIVE_RMSE = 0.05  # regression outputs: RMSE of the difference / RMS of the source

# Start the long tasks and the ones others depend on first, so two workers stay busy.
_SCHEDULE_ORDER = (
    "coreml-fp16",
    "coreml-fp32",
    "tflite-int8-full",
    "coreml-palettized-6bit",
    "coreml-palettized-4bit",
    "coreml-int8",
    "tflite-fp32",
    "tflite-fp16",
    "tflite-int8-dynamic",
)


def default_parallelism() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def convert_version(
    source_path: Path,
    workdir: Path,
    *,
    variants: list[str] | None = None,
    eval_path: Path | None = None,
    accuracy_drop_threshold_pp: float = 1.0,
    latency_runs: int = 50,
    max_parallel: int | None = None,
    progress: ProgressFn | None = None,
    max_extract_bytes: int = MAX_SAVEDMODEL_BYTES,
    check_ops: bool = True,
    declared: dict | None = None,
    max_relative_rmse: float = DEFAULT_MAX_RELATIVE_RMSE,
    attached: list[tuple[str, Path]] | None = None,
) -> list[VariantResult]:
    """See registry.convert.convert_version."""
    names = validate_variants(variants)
    if latency_runs < 1:
        raise ValueError("latency_runs must be at least 1")
    if max_parallel is not None and max_parallel < 1:
        raise ValueError("max_parallel must be at least 1")
    if not accuracy_drop_threshold_pp >= 0:
        raise ValueError("accuracy_drop_threshold_pp must be a number >= 0")
    if not max_relative_rmse >= 0:
        raise ValueError("max_relative_rmse must be a number >= 0")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    build_dir = workdir / "build"
    build_dir.mkdir(exist_ok=True)

    builds = plan_builds(names)
    workers = min(max_parallel or default_parallelism(), len(builds))
    # Start the workers first: their imports overlap the parent's load and export.
    framework = "torch" if Path(source_path).suffix.lower() in (".pt2", ".pt") else "tensorflow"
    executor = _start_pool(workers, framework) if workers > 1 else _InlineExecutor()
    declared = declared or {}
    declared_outputs = [t for t in declared.get("output") or [] if isinstance(t, dict)]
    try:
        source = load_source(Path(source_path), workdir, max_extract_bytes=max_extract_bytes,
                             check_ops=check_ops, eval_path=Path(eval_path) if eval_path is not None else None,
                             output_names=[str(t.get("name")) for t in declared_outputs] or None)
        signature = source.signature
        check_declared(signature, declared)
        evalset = (
            load_eval_set(Path(eval_path), signature.inputs, signature.outputs)
            if eval_path is not None
            else synthetic_eval_set(signature.inputs, signature.int_high)
        )
        reference = source.predict(evalset.inputs)
        del source  # the parent no longer needs the model itself; workers load the SavedModel
        declared_tasks = {str(t.get("name")): t.get("task") for t in declared_outputs}
        labels = resolve_labels(evalset.labels, reference, declared_tasks)
        tasks = _fidelity.output_tasks(reference, declared_tasks, set(labels))
        for name, y in labels.items():
            if tasks[name] != _fidelity.CLASSIFICATION:
                raise ConversionError(f"the eval set labels output {name!r}, which is declared {tasks[name]}")
            expected = _fidelity.top1(reference[name]).shape
            if y.shape != expected:
                raise ConversionError(f"evaluation labels for output {name!r} have shape {y.shape} but the model "
                                      f"predicts classes of shape {expected}")
        calibration_path = None
        if "tflite-int8-full" in names:
            calibration_path = build_dir / "calibration.npz"
            np.savez(calibration_path, **evalset.calibration_inputs())

        run = _Run(
            names=names,
            signature=signature,
            workdir=workdir,
            evalset=evalset,
            reference=reference,
            labels=labels,
            tasks=tasks,
            threshold_pp=float(accuracy_drop_threshold_pp),
            max_relative_rmse=float(max_relative_rmse),
            latency_runs=latency_runs,
            calibration_path=calibration_path,
            progress=progress,
        )
        results = run.execute(executor, builds, workers)
        # After the pool is gone (as the latency of converted variants is measured): the
        # engineer's own artifacts, each against the same reference outputs.
        if attached:
            from ._attached import measure_attached

            total = len(names) + len(attached)
            for done, (variant, path) in enumerate(attached, len(names) + 1):
                results.append(measure_attached(run, variant, Path(path), max_extract_bytes))
                if progress is not None:
                    progress(done, total, variant)
        return results
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def resolve_labels(labels: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                   declared_tasks: dict[str, str | None]) -> dict[str, np.ndarray]:
    """Tie the eval set's ``y`` to an output: the model's only output; else the one output
    declared ``classification``; else the one softmax-like output. ``y__<name>`` labels
    are already tied."""
    resolved = {name: y for name, y in labels.items() if name != "y"}
    if "y" not in labels:
        return resolved
    outputs = list(reference)
    if len(outputs) == 1:
        target = outputs[0]
    else:
        declared = [n for n in outputs if declared_tasks.get(n) == _fidelity.CLASSIFICATION]
        likely = [n for n in outputs if declared_tasks.get(n) is None and _fidelity.softmax_like(reference[n])]
        candidates = declared if declared else likely
        if len(candidates) != 1:
            raise ConversionError(
                "the eval set's 'y' could label any of the outputs "
                f"{', '.join(repr(n) for n in candidates or outputs)}; name its output: y__<output name>")
        target = candidates[0]
    if target in resolved:
        raise ConversionError(f"the eval set labels output {target!r} twice ('y' and 'y__{target}')")
    resolved[target] = labels["y"]
    return resolved


def plan_builds(names: list[str]) -> list[str]:
    """Requested variants plus the Core ML packages they derive from or are compared to,
    in scheduling order."""
    needed = set(names)
    if any(VARIANTS[n].format == "coreml" for n in names):
        needed.add("coreml-fp32")  # the weight reference for every Core ML variant
    for name in list(needed):
        if name in _coreml.BASE_VARIANT:
            needed.add(_coreml.BASE_VARIANT[name])
    return [n for n in _SCHEDULE_ORDER if n in needed]


def _start_pool(workers: int, framework: str = "tensorflow") -> ProcessPoolExecutor:
    # spawn, not fork: forking a process that has TensorFlow loaded can hang.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_tasks.warm_up_worker, initargs=(framework,))
    for _ in range(workers):
        pool.submit(_tasks.worker_ready)
    return pool


class _InlineExecutor:
    """Same interface as the pool for max_parallel == 1: run the task in this process."""

    def submit(self, fn, *args):
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - run_task catches converter errors  # pragma: no cover
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class _Run:
    """State of one convert_version call."""

    def __init__(self, *, names, signature: ModelSignature, workdir: Path, evalset: EvalSet,
                 reference: dict[str, np.ndarray], labels: dict[str, np.ndarray], tasks: dict[str, str],
                 threshold_pp: float, max_relative_rmse: float, latency_runs: int,
                 calibration_path: Path | None, progress: ProgressFn | None):
        self.names = names
        self.signature = signature
        self.workdir = workdir
        self.build_dir = workdir / "build"
        self.artifact_dir = workdir / "variants"
        self.evalset = evalset
        self.reference = reference
        self.labels = labels
        self.tasks = tasks
        self.threshold_pp = threshold_pp
        self.max_relative_rmse = max_relative_rmse
        self.latency_runs = latency_runs
        self.calibration_path = calibration_path
        self.progress = progress
        self.results: dict[str, VariantResult] = {}
        self.outcomes: dict[str, TaskOutcome] = {}
        self.finished = 0
        self.reference_weights = None  # float32 Core ML weights, once coreml-fp32 is built
        self.awaiting_reference: list[str] = []
        self.awaiting_latency: list[str] = []

    # -- running ----------------------------------------------------------------------

    def _task(self, name: str) -> ConvertTask:
        base = _coreml.BASE_VARIANT.get(name)
        return ConvertTask(
            variant=name,
            signature=self.signature,
            build_dir=str(self.build_dir),
            artifact_path=str(self.artifact_dir / VARIANTS[name].filename()),
            calibration_path=str(self.calibration_path) if name == "tflite-int8-full" else None,
            base_package=self.outcomes[base].package_path if base else None,
        )

    def execute(self, executor, builds: list[str], workers: int) -> list[VariantResult]:
        pending = list(builds)
        parallel = workers > 1
        running: dict[Future, tuple[str, object]] = {}  # future -> (variant, executor it ran on)
        try:
            while pending or running:
                for name in list(pending):
                    if len(running) >= workers:
                        break
                    base = _coreml.BASE_VARIANT.get(name)
                    if base and base not in self.outcomes:
                        continue  # its base package is still being built
                    pending.remove(name)
                    if base and self.outcomes[base].error:
                        failed = TaskOutcome(name, None, None, 0.0,
                                             f"needs {base}, which failed: {self.outcomes[base].error}")
                        self._on_outcome(failed, defer_latency=parallel)
                        continue
                    try:
                        future = executor.submit(run_task, self._task(name))
                    except BrokenProcessPool:
                        executor = _start_pool(workers, self.signature.framework)
                        future = executor.submit(run_task, self._task(name))
                    running[future] = (name, executor)
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name, ran_on = running.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as exc:
                        # A worker died (e.g. killed for memory); every task on that pool fails
                        # with this, but only the first one replaces the pool.
                        outcome = TaskOutcome(name, None, None, 0.0, f"conversion worker died: {describe_error(exc)}")
                        if ran_on is executor:
                            executor.shutdown(wait=False, cancel_futures=True)
                            executor = _start_pool(workers, self.signature.framework)
                    self._on_outcome(outcome, defer_latency=parallel)
            executor.shutdown(wait=True)
        finally:
            # Reached with work in flight only on an exception (e.g. progress() raising to
            # cancel): do not wait for running conversions.
            executor.shutdown(wait=False, cancel_futures=True)
        # The pool is gone: measure latency now, on an otherwise idle CPU.
        for name in self.awaiting_latency:
            self._measure_latency(name)
        return [self.results[name] for name in self.names]

    def _on_outcome(self, outcome: TaskOutcome, *, defer_latency: bool) -> None:
        name = outcome.variant
        self.outcomes[name] = outcome
        log.info("built %s in %.1f s%s", name, outcome.seconds, f" (error: {outcome.error})" if outcome.error else "")
        if name == "coreml-fp32":
            self._load_reference_weights(outcome)
        if name not in self.names:
            return  # an intermediate package, built only for other variants
        spec = VARIANTS[name]
        if outcome.error:
            self.results[name] = VariantResult(name=name, format=spec.format, servable=False,
                                               reason=outcome.error, error=outcome.error)
            self._finish(name)
        elif spec.format == "tflite":
            self._measure_tflite(outcome)
            if self.results[name].error or not defer_latency:
                self._measure_latency(name)
            else:
                self.awaiting_latency.append(name)
        elif self.reference_weights is None and "coreml-fp32" not in self.outcomes:
            self.awaiting_reference.append(name)
        else:
            self._check_coreml(outcome)

    def _load_reference_weights(self, outcome: TaskOutcome) -> None:
        if outcome.error is None:
            try:
                self.reference_weights = _coreml.reference_weights(Path(outcome.package_path))
            except Exception as exc:  # noqa: BLE001 - a failed step fails this variant only
                log.warning("cannot read float32 Core ML weights: %s", describe_error(exc))
        waiting, self.awaiting_reference = self.awaiting_reference, []
        for name in waiting:
            self._check_coreml(self.outcomes[name])

    # -- measuring ----------------------------------------------------------------------

    def _artifact_result(self, outcome: TaskOutcome) -> VariantResult:
        path = Path(outcome.artifact_path)
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return VariantResult(name=outcome.variant, format=VARIANTS[outcome.variant].format,
                             path=path, size=path.stat().st_size, sha256=digest.hexdigest())

    def _fail(self, name: str, exc: Exception, stage: str) -> None:
        message = f"{stage}: {describe_error(exc)}"
        self.results[name] = VariantResult(name=name, format=VARIANTS[name].format,
                                           servable=False, reason=message, error=message)

    def _measure_tflite(self, outcome: TaskOutcome) -> None:
        name = outcome.variant
        try:
            result = self._artifact_result(outcome)
            result.signature = self._read_signature(_signature.tflite_signature, result.path)
            outputs = _tflite.run_tflite(result.path, self.evalset.inputs, [t.name for t in self.signature.outputs])
            result.fidelity = _fidelity.output_fidelity(
                self.reference, outputs, labels=self.labels, eval_source=self.evalset.source, tasks=self.tasks
            )
            result.servable, result.reason = _fidelity.tflite_servability(
                result.fidelity, self.threshold_pp, self.max_relative_rmse)
        except Exception as exc:  # noqa: BLE001 - a failed step fails this variant only
            self._fail(name, exc, "interpreter check failed")
            return
        self.results[name] = result

    def _read_signature(self, reader, path: Path) -> dict:
        """The artifact's own signature, ``narrowed_from`` where the source's dtype was wider."""
        return _signature.mark_narrowed(reader(path), self.signature.as_dict())

    def _measure_latency(self, name: str) -> None:
        result = self.results[name]
        if result.error is None:
            try:
                timings = _tflite.time_tflite(result.path, self.evalset.first_sample(), self.latency_runs)
                result.reference_latency_ms = _fidelity.latency_summary(timings)
            except Exception as exc:  # noqa: BLE001 - a failed step fails this variant only
                self._fail(name, exc, "latency measurement failed")
        self._finish(name)

    def _check_coreml(self, outcome: TaskOutcome) -> None:
        name = outcome.variant
        try:
            result = self._artifact_result(outcome)
            result.signature = self._read_signature(_signature.coreml_signature, result.path)
            report = _coreml.check_package(result.path, self.reference_weights, self.signature.inputs)
            result.fidelity = _fidelity.coreml_fidelity(report, [t.name for t in self.signature.outputs])
            result.servable, result.reason = True, None  # validated and reloaded
        except Exception as exc:  # noqa: BLE001 - a failed step fails this variant only
            self._fail(name, exc, "package check failed")
        else:
            self.results[name] = result
        self._finish(name)

    def _finish(self, name: str) -> None:
        self.finished += 1
        if self.progress is not None:
            self.progress(self.finished, len(self.names), name)
