"""Conversion engine: real models in, real TFLite interpreter and Core ML packages out.

Every conversion here goes through the job's sandboxed path (``registry.jobs.conversion``:
bubblewrap, the converter process, the worker's re-hash and result checks), so what is
asserted is what a job publishes. Only the test that patches the engine's converters runs
the engine in this process, since a patch cannot cross into the sandbox.

Every recorded number is checked against a computation made here, independently of
registry.convert: the test runs the interpreter itself (one sample at a time, its own
quantization arithmetic), computes agreement/accuracy/errors with numpy against the
in-memory Keras model, and recomputes the Core ML weight error against the Keras
weights rather than against the float32 Core ML program the engine uses.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from registry.config import Settings
from registry.convert import (
    VARIANT_NAMES,
    VARIANTS,
    ConversionError,
    validate_variants,
)
from registry.convert import convert_version as convert_in_this_process
from registry.jobs.conversion import convert_file
from registry.jobs.results import scrub
from tests import makers_keras

pytestmark = pytest.mark.slow

TFLITE = [n for n in VARIANT_NAMES if VARIANTS[n].format == "tflite"]
COREML = [n for n in VARIANT_NAMES if VARIANTS[n].format == "coreml"]
H5_VARIANTS = ["tflite-fp16", "coreml-int8"]
ZIP_VARIANTS = ["tflite-int8-dynamic", "tflite-int8-full", "coreml-palettized-4bit"]
LATENCY_RUNS = 20


def convert_version(source, workdir, *, variants=None, eval_path=None, accuracy_drop_threshold_pp=1.0,
                    latency_runs=50, max_parallel=None, progress=None):
    """registry.convert.convert_version's contract, through the sandboxed job path."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings.load({"data_dir": workdir / "data", "latency_runs": latency_runs,
                              "convert_max_parallel": max_parallel or 0, "convert_sandbox": "required"},
                             environ={})
    return convert_file(settings, source, workdir / "job", eval_path=eval_path, variants=variants,
                        threshold_pp=accuracy_drop_threshold_pp, progress=progress)


# -- fixtures: train once, convert each upload format once ------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    paths, model = makers_keras.make_digits_models(tmp_path_factory.mktemp("digits"))
    _, _, x_eval, y_eval = makers_keras.digits_data()
    reference = model.predict(x_eval, batch_size=64, verbose=0)
    return {"paths": paths, "model": model, "x": x_eval, "y": y_eval, "reference": reference}


def _convert(source, tmp_path_factory, **kwargs):
    calls = []
    results = convert_version(
        source,
        tmp_path_factory.mktemp("work"),
        latency_runs=LATENCY_RUNS,
        progress=lambda k, n, name: calls.append((k, n, name)),
        **kwargs,
    )
    return results, calls


@pytest.fixture(scope="module")
def keras_all(digits, tmp_path_factory):
    """Every variant from the .keras upload, in a pool of two spawned workers."""
    return _convert(digits["paths"].keras_path, tmp_path_factory,
                    eval_path=digits["paths"].eval_npz, max_parallel=2)


@pytest.fixture(scope="module")
def h5_subset(digits, tmp_path_factory):
    """A subset from the .h5 upload, converted in this process (max_parallel=1)."""
    return _convert(digits["paths"].h5_path, tmp_path_factory, variants=H5_VARIANTS,
                    eval_path=digits["paths"].eval_npz, max_parallel=1)


@pytest.fixture(scope="module")
def zip_subset(digits, tmp_path_factory):
    """A subset from the zipped SavedModel; the Core ML variant needs intermediate packages."""
    return _convert(digits["paths"].saved_model_zip, tmp_path_factory, variants=ZIP_VARIANTS,
                    eval_path=digits["paths"].eval_npz, max_parallel=2)


@pytest.fixture(params=["keras", "h5", "zip"])
def converted(request):
    return request.getfixturevalue({"keras": "keras_all", "h5": "h5_subset", "zip": "zip_subset"}[request.param])[0]


# -- independent computations ---------------------------------------------------------------


def _interpreter_outputs(model_path: Path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run the real interpreter one sample at a time, quantizing/dequantizing by hand."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    outputs = []
    for sample in x:
        batch = sample[None, ...]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            batch = np.clip(np.round(batch / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            raw = (raw.astype(np.float64) - zero) * scale
        outputs.append(raw.astype(np.float64))
    return np.stack(outputs), inp


def _expected_fidelity(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict:
    agree = np.mean(outputs.argmax(1) == reference.argmax(1))
    diff = np.abs(outputs - reference.astype(np.float64))
    expected = {"top1_agreement": agree, "max_abs_error": diff.max(), "mean_abs_error": diff.mean()}
    if labels is not None:
        acc = np.mean(outputs.argmax(1) == labels)
        source_acc = np.mean(reference.argmax(1) == labels)
        expected.update(accuracy=acc, accuracy_drop=100 * (source_acc - acc))
    return expected


def _assert_fidelity(recorded: dict, expected: dict) -> None:
    assert recorded["top1_agreement"] == pytest.approx(expected["top1_agreement"], abs=1e-12)
    # Output probabilities lie in [0, 1]; 1e-6 is a few float32 ulps, far below any quantization error.
    assert recorded["max_abs_error"] == pytest.approx(expected["max_abs_error"], rel=1e-4, abs=1e-6)
    assert recorded["mean_abs_error"] == pytest.approx(expected["mean_abs_error"], rel=1e-4, abs=1e-6)
    if "accuracy" in expected:
        assert recorded["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert recorded["accuracy_drop"] == pytest.approx(expected["accuracy_drop"], abs=1e-9)


def _keras_kernels_in_coreml_layout(model) -> list[np.ndarray]:
    """Conv/dense kernels and biases, transposed to Core ML's layout (conv OIHW, dense (out, in)).

    BatchNormalization is left out: TensorFlow lowers it to multiply/add and coremltools
    fuses that back into a batch_norm op with derived parameters, so its vectors are
    not the Keras ones.
    """
    arrays = []
    for layer in model.layers:
        if type(layer).__name__ not in ("Conv2D", "Dense"):
            continue
        for weight in layer.weights:
            value = np.asarray(weight.numpy(), dtype=np.float64)
            arrays.append(value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value)
    return arrays


def _coreml_weights(zip_path: Path, tmp: Path):
    """Reload a shipped package and read every float weight with coremltools' own decompression."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp)
    (package,) = list(tmp.glob("*.mlpackage"))
    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    spec = mlmodel.get_spec()
    program = load_milproto(model_spec=spec, specification_version=spec.specificationVersion,
                            file_weights_dir=mlmodel.weights_dir)
    tensors = []
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            if any(child.op_type.startswith("constexpr_") for child in op.outputs[0].child_ops):
                continue  # a look-up table, indices or scale: part of a compressed weight
            value, compressed = op.outputs[0].val, False
        elif op.op_type.startswith("constexpr_"):
            value, compressed = op.materialized_val_inference(), True
        else:
            continue
        if isinstance(value, np.ndarray) and value.ndim >= 1 and np.issubdtype(value.dtype, np.floating):
            tensors.append((value.astype(np.float64), compressed, op.op_type))
    return spec, tensors


def _pairing_cost(candidates, references, *, subset=False) -> tuple[float, float, list[float]]:
    """Pair tensors of equal shape by minimum total squared distance (Hungarian assignment).

    With ``subset`` the candidates need only be a subset of the references.
    Returns (sum of squared differences, sum of squared reference values, per-pair distances).
    """
    from scipy.optimize import linear_sum_assignment

    by_shape: dict[tuple, tuple[list, list]] = {}
    for value in candidates:
        by_shape.setdefault(value.shape, ([], []))[0].append(value)
    for value in references:
        by_shape.setdefault(value.shape, ([], []))[1].append(value)
    num = den = 0.0
    distances = []
    for shape, (cands, refs) in by_shape.items():
        if subset:
            assert len(cands) <= len(refs), f"{len(cands)} vs {len(refs)} tensors of shape {shape}"
        else:
            assert len(cands) == len(refs), f"{len(cands)} vs {len(refs)} tensors of shape {shape}"
        cost = np.array([[np.sum((c - r) ** 2) for r in refs] for c in cands])
        rows, cols = linear_sum_assignment(cost)
        num += cost[rows, cols].sum()
        den += sum(np.sum(refs[j] ** 2) for j in cols)
        distances.extend(cost[rows, cols])
    return num, den, distances


def _near_tie_inputs(model, x, classes, count: int, margin: float) -> np.ndarray:
    """Blends of two differently classified digits where the top-2 probability gap is ~margin.

    The gap (1e-3) is far above float noise between runs of the same float model, but
    within full-integer quantization error, so an int8 variant flips some of them.
    """
    rng = np.random.default_rng(7)
    first, second = rng.integers(0, len(x), 4 * count), rng.integers(0, len(x), 4 * count)
    keep = classes[first] != classes[second]
    first, second = first[keep][:count], second[keep][:count]
    a, b = x[first], x[second]
    low, high = np.zeros(count), np.ones(count)
    for _ in range(30):
        mid = (low + high) / 2
        blend = (1 - mid)[:, None, None, None] * a + mid[:, None, None, None] * b
        probs = model.predict(blend, batch_size=256, verbose=0)
        top2 = np.sort(probs, axis=1)[:, -2:]
        ok = (probs.argmax(1) == classes[first]) & (top2[:, 1] - top2[:, 0] >= margin)
        low, high = np.where(ok, mid, low), np.where(ok, high, mid)
    return ((1 - low)[:, None, None, None] * a + low[:, None, None, None] * b).astype(np.float32)


# -- results and progress --------------------------------------------------------------------


def test_keras_upload_builds_every_variant_with_progress(keras_all):
    results, calls = keras_all
    assert [r.name for r in results] == list(VARIANT_NAMES)
    for result in results:
        assert result.error is None, f"{result.name}: {result.error}"
        assert result.format == VARIANTS[result.name].format
        assert result.path.name == f"{result.name}.{VARIANTS[result.name].extension}"
        data = result.path.read_bytes()
        assert result.size == len(data) > 0
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert result.servable is True and result.reason is None
        # The job worker stores these dicts as JSON: plain Python values only.
        assert json.loads(json.dumps(result.fidelity)) == result.fidelity
        assert json.loads(json.dumps(result.reference_latency_ms)) == result.reference_latency_ms
    assert [k for k, _, _ in calls] == list(range(1, 10))
    assert {n for _, n, _ in calls} == {9}
    assert sorted(name for _, _, name in calls) == sorted(VARIANT_NAMES)


def test_every_upload_format_builds_tflite_and_coreml(keras_all, h5_subset, zip_subset):
    for results in (keras_all[0], h5_subset[0], zip_subset[0]):
        formats = {r.format for r in results if r.error is None and r.servable}
        assert formats == {"tflite", "coreml"}
    assert [r.name for r in h5_subset[0]] == H5_VARIANTS
    assert [r.name for r in zip_subset[0]] == ZIP_VARIANTS
    # Intermediate packages (coreml-fp32/fp16) are built for the zip subset but not reported.
    assert sorted(name for _, _, name in zip_subset[1]) == sorted(ZIP_VARIANTS)
    assert [(k, n) for k, n, _ in zip_subset[1]] == [(1, 3), (2, 3), (3, 3)]


def test_every_built_variant_carries_the_signature_read_from_its_artifact(h5_subset, digits):
    """The signature came through the sandbox and the worker's check; it matches the model."""
    sample_shape = list(digits["x"].shape[1:])
    classes = digits["reference"].shape[1]
    for result in h5_subset[0]:
        signature = result.signature
        assert signature is not None, result.name
        ((inp,), (out,)) = signature["inputs"], signature["outputs"]
        assert inp["dtype"] == out["dtype"] == "float32"
        assert inp["shape"][1:] == sample_shape and inp["shape"][0] in (None, 1)
        assert out["shape"][1:] == [classes]


def test_variant_sizes_shrink_with_compression(keras_all):
    size = {r.name: r.size for r in keras_all[0]}
    assert size["tflite-fp16"] < size["tflite-fp32"]
    assert size["tflite-int8-dynamic"] < size["tflite-fp16"]
    assert size["coreml-fp16"] < size["coreml-fp32"]
    assert size["coreml-palettized-4bit"] < size["coreml-palettized-6bit"] < size["coreml-fp16"]


# -- TFLite: fidelity and latency against an independent interpreter run -------------------


def test_tflite_fidelity_matches_independent_interpreter_run(converted, digits):
    for result in (r for r in converted if r.format == "tflite"):
        outputs, input_detail = _interpreter_outputs(result.path, digits["x"])
        if result.name == "tflite-int8-full":
            assert input_detail["dtype"] == np.int8, "full-integer variant takes int8 input"
        expected = _expected_fidelity(outputs, digits["reference"], digits["y"])
        _assert_fidelity(result.fidelity, expected)
        assert result.fidelity["eval_samples"] == len(digits["x"])
        assert result.fidelity["eval_source"] == "uploaded"
        if result.name == "tflite-fp32":
            assert result.fidelity["max_abs_error"] < 1e-5
        else:
            assert result.fidelity["max_abs_error"] > 1e-6, f"{result.name} changed nothing"


def test_tflite_reference_latency(converted):
    for result in (r for r in converted if r.format == "tflite"):
        latency = result.reference_latency_ms
        assert latency["device_class"] == "server-x86_64"
        assert latency["runs"] == LATENCY_RUNS
        assert 0 < latency["p50"] <= latency["p90"] < 1000


# -- Core ML: reload, validate, weight error against the Keras weights -----------------------


def test_coreml_packages_reload_and_weight_error_is_honest(converted, digits, tmp_path):
    results = {r.name: r for r in converted if r.format == "coreml"}
    # The float32 program is the reference; rebuild it here when this subset did not ship it.
    if "coreml-fp32" in results:
        fp32_zip = results["coreml-fp32"].path
    else:
        (fp32,) = convert_version(digits["paths"].keras_path, tmp_path / "fp32", variants=["coreml-fp32"],
                                  eval_path=digits["paths"].eval_npz, max_parallel=1)
        fp32_zip = fp32.path
    _, fp32_tensors = _coreml_weights(fp32_zip, tmp_path / "reference")
    fp32_values = [value for value, _, _ in fp32_tensors]
    # The reference really is the uploaded model: every Keras kernel and bias is in it, bit for bit.
    kernels = _keras_kernels_in_coreml_layout(digits["model"])
    _, _, distances = _pairing_cost(kernels, fp32_values, subset=True)
    assert max(distances) == 0.0

    import keras
    import tensorflow as tf

    # The upload's own input name: the .keras/.h5 file's input layer, or the zipped SavedModel's
    # serving signature key (model.export names it after the in-memory tensor, keras_tensor).
    keras_name = keras.models.load_model(digits["paths"].keras_path, compile=False).inputs[0].name
    export_dir = digits["paths"].saved_model_zip.with_suffix("")
    serving = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    (saved_model_name,) = serving.structured_input_signature[1]
    for result in results.values():
        spec, tensors = _coreml_weights(result.path, tmp_path / result.name)
        assert spec.WhichOneof("Type") == "mlProgram"
        # Features carry the Keras model's own tensor names.
        assert [f.name for f in spec.description.input] in ([keras_name], [saved_model_name])
        assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 8, 8, 1]
        # A Sequential model's output is named after its last layer (a SavedModel: its signature's key).
        assert [f.name for f in spec.description.output] in ([digits["model"].layers[-1].name],
                                                              list(serving.structured_outputs))

        fidelity = result.fidelity
        assert result.servable is True and result.reason is None
        assert fidelity["spec_valid"] is True and fidelity["reloaded"] is True
        assert fidelity["device_measured"] == "pending device telemetry"
        for pending in ("top1_agreement", "accuracy", "accuracy_drop", "max_abs_error", "mean_abs_error"):
            assert fidelity[pending] is None
        assert result.reference_latency_ms is None

        num, den, _ = _pairing_cost([value for value, _, _ in tensors], fp32_values)
        assert fidelity["weights_compared"] == len(fp32_values)
        assert fidelity["weight_elements"] == sum(v.size for v in fp32_values)
        assert fidelity["weight_rel_error"] == pytest.approx(np.sqrt(num / den), rel=1e-6, abs=1e-12)

        compressed = [(value, op_type) for value, is_compressed, op_type in tensors if is_compressed]
        if "palettized" in result.name:
            bits = 6 if "6bit" in result.name else 4
            assert compressed and all(op_type == "constexpr_lut_to_dense" for _, op_type in compressed)
            assert all(np.unique(value).size <= 2 ** bits for value, _ in compressed)
        elif result.name == "coreml-int8":
            assert compressed and all(op_type == "constexpr_affine_dequantize" for _, op_type in compressed)
        else:
            assert not compressed


def test_coreml_weight_error_orders_by_compression(keras_all):
    error = {r.name: r.fidelity["weight_rel_error"] for r in keras_all[0] if r.format == "coreml"}
    assert error["coreml-fp32"] == 0.0
    assert (0 < error["coreml-fp16"] < error["coreml-int8"] < error["coreml-palettized-6bit"]
            < error["coreml-palettized-4bit"])


# -- synthetic eval set; reproducible Core ML bytes ------------------------------------------


def test_synthetic_eval_set_and_reproducible_packages(digits, keras_all, tmp_path):
    from registry.convert._evalset import synthetic_eval_set  # to rebuild the same inputs

    results = convert_version(digits["paths"].keras_path, tmp_path / "work",
                              variants=["tflite-fp32", "coreml-palettized-4bit"],
                              latency_runs=5, max_parallel=1)
    tflite, coreml = results
    assert tflite.fidelity["eval_source"] == "synthetic"
    assert tflite.fidelity["accuracy"] is None and tflite.fidelity["accuracy_drop"] is None
    (synthetic,) = synthetic_eval_set((8, 8, 1)).inputs.values()
    assert tflite.fidelity["eval_samples"] == len(synthetic)
    outputs, _ = _interpreter_outputs(tflite.path, synthetic)
    reference = digits["model"].predict(synthetic, verbose=0)
    _assert_fidelity(tflite.fidelity, _expected_fidelity(outputs, reference, None))

    # Same upload, other process layout (in-process vs spawned pool), other day: same bytes.
    earlier = {r.name: r.sha256 for r in keras_all[0]}
    assert coreml.sha256 == earlier["coreml-palettized-4bit"]
    assert tflite.sha256 == earlier["tflite-fp32"]
    with zipfile.ZipFile(coreml.path) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


# -- servability threshold -----------------------------------------------------------------


@pytest.mark.parametrize("with_labels", [True, False])
def test_strict_threshold_makes_variant_unservable(digits, tmp_path, with_labels):
    model = digits["model"]
    x = _near_tie_inputs(model, digits["x"], digits["reference"].argmax(1), count=40, margin=1e-3)
    source_classes = model.predict(x, verbose=0).argmax(1)
    # Labels equal to the source's own answers: the source scores 100%, so any flip is a drop.
    eval_npz = makers_keras.make_eval_npz(tmp_path / "ties.npz", x, source_classes if with_labels else None)

    def run(threshold):
        (result,) = convert_version(digits["paths"].keras_path, tmp_path / f"work{threshold}",
                                    variants=["tflite-int8-full"], eval_path=eval_npz,
                                    accuracy_drop_threshold_pp=threshold, latency_runs=3, max_parallel=1)
        return result

    lenient, strict = run(100.0), run(0.5)
    assert lenient.fidelity == strict.fidelity
    outputs, _ = _interpreter_outputs(strict.path, x)
    disagreement_pp = 100 * np.mean(outputs.argmax(1) != source_classes)
    assert disagreement_pp > 0.5, "near-tie inputs should flip some int8 predictions"
    assert lenient.servable is True and lenient.reason is None
    assert strict.servable is False and strict.error is None
    if with_labels:
        assert strict.fidelity["accuracy_drop"] == pytest.approx(disagreement_pp)
        assert strict.reason == f"accuracy drop {disagreement_pp:.2f} pp exceeds threshold 0.50 pp"
    else:
        assert strict.fidelity["accuracy_drop"] is None
        assert strict.reason.startswith(
            f"top-1 disagreement with the source {disagreement_pp:.2f} pp exceeds threshold 0.50 pp"
        )
        assert "no labels" in strict.reason


# -- failures ------------------------------------------------------------------------------


def test_bad_source_raises_conversion_error_with_loader_message(tmp_path):
    import keras

    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a keras archive")
    with pytest.raises(Exception) as loader:
        keras.models.load_model(bad)
    with pytest.raises(ConversionError) as raised:
        convert_version(bad, tmp_path / "work", variants=["tflite-fp32"])
    # The loader's own words reach the user, with paths scrubbed (they name server dirs).
    assert scrub(str(loader.value)) in str(raised.value)
    assert str(tmp_path) not in str(raised.value) and "/tmp" not in str(raised.value)


def test_unsafe_saved_model_zip_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("saved_model.pb", b"")
        archive.writestr("../escaped.txt", b"gotcha")
    with pytest.raises(ConversionError, match="unsafe path"):
        convert_version(evil, tmp_path / "work" / "deeper", variants=["tflite-fp32"])
    assert not (tmp_path / "work" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()


def test_eval_set_that_does_not_fit_raises(digits, tmp_path):
    wrong = makers_keras.make_eval_npz(tmp_path / "wrong.npz", np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(ConversionError, match=r"expected \(N, 8, 8, 1\)"):
        convert_version(digits["paths"].keras_path, tmp_path / "work", variants=["tflite-fp32"], eval_path=wrong)


def test_unknown_variant_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="tflite-int3"):
        convert_version(tmp_path / "never-read.keras", tmp_path / "work", variants=["tflite-fp32", "tflite-int3"])
    with pytest.raises(ValueError, match="coreml-2bit"):
        validate_variants(["coreml-2bit"])
    assert validate_variants(None) == list(VARIANT_NAMES)
    assert validate_variants(["coreml-fp16", "tflite-fp32", "coreml-fp16"]) == ["tflite-fp32", "coreml-fp16"]


def test_failed_variant_keeps_its_message_and_others_still_convert(digits, tmp_path, monkeypatch):
    from registry.convert import _coreml, _tflite

    real_tflite, real_coreml = _tflite.convert_tflite, _coreml.convert_coreml

    def tflite(signature, variant, *args):
        if variant == "tflite-fp16":
            raise RuntimeError("fp16 converter exploded")
        return real_tflite(signature, variant, *args)

    def coreml(signature, variant, *args):
        if variant == "coreml-fp16":
            raise RuntimeError("mlprogram fp16 pass failed")
        return real_coreml(signature, variant, *args)

    monkeypatch.setattr(_tflite, "convert_tflite", tflite)
    monkeypatch.setattr(_coreml, "convert_coreml", coreml)
    results = convert_in_this_process(digits["paths"].keras_path, tmp_path / "work",
                              variants=["tflite-fp32", "tflite-fp16", "coreml-int8", "coreml-palettized-4bit"],
                              eval_path=digits["paths"].eval_npz, latency_runs=3, max_parallel=1)
    by_name = {r.name: r for r in results}
    assert by_name["tflite-fp16"].error == "RuntimeError: fp16 converter exploded"
    assert by_name["tflite-fp16"].reason == by_name["tflite-fp16"].error
    assert by_name["coreml-palettized-4bit"].error.startswith(
        "needs coreml-fp16, which failed: RuntimeError: mlprogram")
    for failed in ("tflite-fp16", "coreml-palettized-4bit"):
        assert by_name[failed].servable is False and by_name[failed].path is None
    for ok in ("tflite-fp32", "coreml-int8"):
        assert by_name[ok].error is None and by_name[ok].servable and by_name[ok].path.is_file()


# -- the web process stays light -------------------------------------------------------------


def test_catalogue_import_does_not_load_heavy_libraries():
    code = (
        "import sys, registry.convert, registry.convert.catalog\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'coremltools', 'numpy', 'ai_edge_litert') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
