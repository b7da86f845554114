"""The model families mobile teams ship, in Keras and PyTorch, through the sandboxed job path.

Each family (tests/makers_keras.py FAMILIES: image classifier, detector with boxes + scores,
landmark regressor, 1-D CNN over accelerometer windows, keyword spotting on a spectrogram,
text classifier on int32 token ids, image + feature-vector model) is built tiny and
random-initialised, saved as a user would (.keras/.h5, .pt2/.pt), and converted by
``registry.jobs.conversion.convert_file`` (bubblewrap, the converter process, the worker's
checks) with its declared signature — the families with several inputs or outputs; the
single-input ones run the same engine in this process (``SANDBOXED``). What comes
back is checked against what the test computes itself: the artifact's tensors (read here
with the LiteRT interpreter and the Core ML spec), and per-output fidelity recomputed from
the in-memory model's outputs and the interpreter's outputs on the published file.

To keep CI time down every family requests at most three variants (TFLite fp32 and dynamic
int8, Core ML fp32; Keras Core ML only for the multi-input/-output families) in one
process; all nine variants per family are measured by bench/bench_families.py
(docs/conversion.md, support matrix). The sandboxed jobs, which spend most of their time
in a converter process of their own, run one at a time in a background thread while this
process converts the other families (the suite is otherwise one process: a second core
would sit idle); their cases are ordered last so that they are ready when reached.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from registry.config import Settings
from registry.convert import ConversionError
from registry.jobs.conversion import convert_file
from tests import makers_keras, makers_torch

pytestmark = pytest.mark.slow

VARIANTS = ["tflite-fp32", "tflite-int8-dynamic", "coreml-fp32"]
TFLITE_ONLY = ["tflite-fp32", "tflite-int8-dynamic"]
# Keras -> Core ML costs ~10 s a job here (TensorFlow graph through coremltools): only the
# families with several inputs or outputs request it; every PyTorch family does.
KERAS_COREML = {"detector", "two_input"}
# The families with several tensors go through the sandboxed job path (the
# converter process, result.json, the worker's checks of signature and per-output fidelity);
# the single-float-input families run the same engine in this process to keep CI time down.
SANDBOXED = {"detector", "two_input"}
# In-process cases first: the sandboxed ones convert in the background meanwhile.
CASES = sorted([(framework, family) for framework in ("keras", "torch") for family in makers_keras.FAMILIES],
               key=lambda case: case[1] in SANDBOXED)
# One family per framework in the other file format: .h5 and TorchScript .pt.
SUFFIX = {("keras", "two_input"): ".h5", ("torch", "two_input"): ".pt"}


def _settings(workdir: Path) -> Settings:
    return Settings.load({"data_dir": workdir / "data", "latency_runs": 5, "convert_max_parallel": 1,
                          "convert_sandbox": "required"}, environ={})


def _convert(source, workdir: Path, *, eval_path=None, variants=VARIANTS, declared=None, sandboxed=True):
    """The job's sandboxed path; ``sandboxed=False`` runs the same engine in this process
    (no converter process to boot and no TensorFlow/torch import per job: ~4x cheaper here)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not sandboxed:
        from registry.convert import convert_version

        return convert_version(source, workdir / "job", variants=variants, eval_path=eval_path, latency_runs=5,
                               max_parallel=1, declared=declared)
    return convert_file(_settings(workdir), source, workdir / "job", eval_path=eval_path, variants=variants,
                        declared=declared)


def _make(framework: str, family: str, directory: Path, **kwargs):
    suffix = SUFFIX.get((framework, family), ".keras" if framework == "keras" else ".pt2")
    maker = makers_keras.make_keras_family if framework == "keras" else makers_torch.make_torch_family
    return maker(family, directory, suffix=suffix, **kwargs)


def _variants(framework: str, family: str) -> list[str]:
    return VARIANTS if framework == "torch" or family in KERAS_COREML else TFLITE_ONLY


@pytest.fixture(scope="module")
def sandboxed_jobs(request, tmp_path_factory):
    """The selected sandboxed cases' models, built here, and their jobs, started one at a
    time in a background thread (each is a converter process: the thread only waits on it)."""
    from concurrent.futures import ThreadPoolExecutor

    selected = {item.callspec.params["converted"] for item in request.session.items
                if hasattr(item, "callspec") and "converted" in item.callspec.params}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandboxed-families")
    jobs = {}
    for framework, family in [case for case in CASES if case[1] in SANDBOXED and case in selected]:
        root = tmp_path_factory.mktemp(f"{framework}-{family}")
        model = _make(framework, family, root / "model")
        future = pool.submit(_convert, model.source, root / "work", eval_path=model.eval_npz,
                             declared=model.metadata, variants=_variants(framework, family), sandboxed=True)
        jobs[(framework, family)] = (model, future)
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", params=CASES, ids=[f"{fw}-{fam}" for fw, fam in CASES])
def converted(request, tmp_path_factory, sandboxed_jobs):
    framework, family = request.param
    variants = _variants(framework, family)
    if family in SANDBOXED:
        model, future = sandboxed_jobs[(framework, family)]
        results = future.result()
    else:
        root = tmp_path_factory.mktemp(f"{framework}-{family}")
        model = _make(framework, family, root / "model")
        results = _convert(model.source, root / "work", eval_path=model.eval_npz, declared=model.metadata,
                           variants=variants, sandboxed=False)
    return {"framework": framework, "model": model, "results": {r.name: r for r in results},
            "reference": model.reference(), "variants": variants}


# -- independent computations ----------------------------------------------------------------


def _interpreter_run(path: Path, inputs: dict) -> dict:
    """Run the published .tflite one sample at a time through its signature runner."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()
    outputs: dict[str, list] = {}
    for i in range(len(next(iter(inputs.values())))):
        feed = {}
        for name, array in inputs.items():
            detail = details[name]
            scale, zero = detail["quantization"]
            value = array[i:i + 1]
            if scale:  # a quantized float input (full-integer models only)
                value = np.clip(np.round(value / scale + zero), -128, 127)
            feed[name] = value.astype(detail["dtype"])
        for name, value in runner(**feed).items():
            outputs.setdefault(name, []).append(value.astype(np.float64))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def _expected(reference: np.ndarray, candidate: np.ndarray, task: str, labels) -> dict:
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    err = cand - ref
    expected = {"task": task, "max_abs_error": float(np.max(np.abs(err))),
                "mean_abs_error": float(np.mean(np.abs(err))),
                "relative_rmse": float(np.sqrt(np.mean(err ** 2)) / np.sqrt(np.mean(ref ** 2)))}
    if task == "classification":
        expected["top1_agreement"] = float(np.mean(ref.argmax(-1) == cand.argmax(-1)))
        if labels is not None:
            source_acc, acc = float(np.mean(ref.argmax(-1) == labels)), float(np.mean(cand.argmax(-1) == labels))
            expected.update(accuracy=acc, source_accuracy=source_acc, accuracy_drop=100 * (source_acc - acc))
    else:
        expected.update(top1_agreement=None, accuracy=None, source_accuracy=None, accuracy_drop=None)
    return expected


def _coreml_features(path: Path) -> tuple[list, list]:
    from coremltools.proto import Model_pb2

    with zipfile.ZipFile(path) as archive:
        (spec_name,) = [n for n in archive.namelist() if n.endswith("model.mlmodel")]
        spec = Model_pb2.Model()
        spec.ParseFromString(archive.read(spec_name))
    def describe(features):
        return [(f.name, list(f.type.multiArrayType.shape)) for f in features]

    return describe(spec.description.input), describe(spec.description.output)


# -- the families -----------------------------------------------------------------------------


def test_every_variant_builds_with_the_models_own_signature(converted):
    model, results = converted["model"], converted["results"]
    assert sorted(results) == sorted(converted["variants"])
    batch = 1 if converted["framework"] == "torch" else None
    reference = converted["reference"]
    for name, result in results.items():
        assert result.error is None, (name, result.error)
        signature = result.signature
        assert signature is not None, name
        inputs = {e["name"]: e for e in signature["inputs"]}
        outputs = {e["name"]: e for e in signature["outputs"]}
        assert sorted(inputs) == sorted(model.inputs) and sorted(outputs) == sorted(model.outputs), name
        for input_name, array in model.inputs.items():
            entry = inputs[input_name]
            assert entry["dtype"] == str(array.dtype), (name, entry)  # int32 token ids stay int32
            assert entry["shape"][1:] == list(array.shape[1:]), (name, entry)
            assert entry["shape"][0] == (1 if result.format == "coreml" else batch)
        for output_name, values in reference.items():
            assert outputs[output_name]["dtype"] == "float32"
            assert outputs[output_name]["shape"][1:] == list(values.shape[1:]), (name, outputs[output_name])
        if result.format == "coreml":
            # What the test reads from the spec itself: the source's names and batch-1 shapes.
            found_in, found_out = _coreml_features(result.path)
            assert found_in == [(n, [1, *a.shape[1:]]) for n, a in model.inputs.items()]
            assert [n for n, _ in found_out] == list(model.outputs)


def test_per_output_fidelity_matches_an_independent_interpreter_run(converted):
    model, results, reference = converted["model"], converted["results"], converted["reference"]
    with np.load(model.eval_npz) as data:
        labels = {name: data[f"y__{name}"] for name in model.outputs if f"y__{name}" in data.files}
    for name in ("tflite-fp32", "tflite-int8-dynamic"):
        result = results[name]
        candidate = _interpreter_run(result.path, model.inputs)
        fidelity = result.fidelity
        assert list(fidelity["outputs"]) == list(model.outputs), name
        for output_name in model.outputs:
            recorded = fidelity["outputs"][output_name]
            expected = _expected(reference[output_name], candidate[output_name], model.tasks[output_name],
                                 labels.get(output_name))
            for key, value in expected.items():
                if value is None or isinstance(value, str):
                    assert recorded[key] == value, (name, output_name, key)
                else:
                    assert recorded[key] == pytest.approx(value, rel=1e-3, abs=1e-6), (name, output_name, key)
            if model.tasks[output_name] == "regression":
                assert recorded["top1_agreement"] is None and recorded["accuracy"] is None
        first = fidelity["outputs"][model.outputs[0]]
        for key in ("top1_agreement", "accuracy", "source_accuracy", "accuracy_drop", "max_abs_error",
                    "mean_abs_error"):
            assert fidelity[key] == first[key], key  # the top-level figures are the first output's
        assert fidelity["eval_source"] == "uploaded" and fidelity["eval_samples"] == len(reference[model.outputs[0]])
        assert result.reference_latency_ms["runs"] == 5
    fp32 = results["tflite-fp32"]
    assert fp32.servable, fp32.reason
    assert all(f["relative_rmse"] < 1e-5 for f in fp32.fidelity["outputs"].values())
    # Servability follows the per-output rules and names the output that fails them.
    dynamic = results["tflite-int8-dynamic"]
    failing = [n for n, f in dynamic.fidelity["outputs"].items() if _fails(f)]
    assert dynamic.servable == (not failing), (dynamic.reason, dynamic.fidelity["outputs"])
    if failing:
        assert (repr(failing[0]) in dynamic.reason) == (len(model.outputs) > 1), dynamic.reason
    if "coreml-fp32" in results:
        coreml = results["coreml-fp32"]
        assert coreml.servable and coreml.fidelity["weight_rel_error"] == 0.0
        assert sorted(coreml.fidelity["outputs"]) == sorted(model.outputs)


def _fails(figures: dict) -> bool:
    if figures["task"] == "regression":
        return figures["relative_rmse"] > 0.05
    if figures["accuracy_drop"] is not None:
        return figures["accuracy_drop"] > 1.0
    return 100 * (1 - figures["top1_agreement"]) > 1.0


def test_synthetic_token_ids_are_valid_for_the_embedding(tmp_path):
    """Without an eval set, integer inputs get ids below the smallest embedding vocabulary."""
    from registry.convert._evalset import synthetic_eval_set
    from registry.convert._source import TensorSpec

    evalset = synthetic_eval_set((TensorSpec("tokens", "int32", (20,)), TensorSpec("image", "float32", (4, 4, 3))),
                                 int_high=makers_keras.VOCAB)
    tokens = evalset.inputs["tokens"]
    assert tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < makers_keras.VOCAB
    assert len(np.unique(tokens)) > makers_keras.VOCAB // 2  # spread over the vocabulary, not a constant
    unknown = synthetic_eval_set((TensorSpec("ids", "int64", (5,)),), int_high=None).inputs["ids"]
    assert unknown.dtype == np.int64 and 0 <= unknown.min() and unknown.max() < 8
    # The text model exported with int64 token ids (torch's default): no eval set, so synthetic
    # ids; litert-torch stores the input as int32, and the signature says it narrowed it.
    import torch

    module = makers_torch._torch_family_module("text_classifier")
    path = tmp_path / "text64.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(1, makers_keras.SEQUENCE, dtype=torch.int64),)),
                      str(path))
    (result,) = _convert(path, tmp_path / "work", variants=["tflite-fp32"], sandboxed=False)
    assert result.servable and result.fidelity["eval_source"] == "synthetic", result.reason
    (tokens,) = result.signature["inputs"]
    assert tokens == {"name": "tokens", "dtype": "int32", "shape": [1, makers_keras.SEQUENCE],
                      "narrowed_from": "int64"}
    assert result.fidelity["outputs"]["output_0"]["top1_agreement"] == 1.0  # unnamed output: output_0


# -- bad inputs: each a clear error before anything is built ----------------------------------


def test_an_eval_set_missing_an_input_names_it(tmp_path):
    model = makers_keras.make_keras_family("two_input", tmp_path / "model")
    partial = tmp_path / "partial.npz"
    np.savez(partial, image=model.inputs["image"])
    with pytest.raises(ConversionError, match="no array for input 'features'"):
        _convert(model.source, tmp_path / "work", eval_path=partial, variants=["tflite-fp32"], sandboxed=False)
    floats = tmp_path / "floats.npz"
    np.savez(floats, tokens=np.zeros((4, makers_keras.SEQUENCE), np.float32))
    text = makers_keras.make_keras_family("text_classifier", tmp_path / "text")
    with pytest.raises(ConversionError, match="array 'tokens' has dtype float32; input 'tokens' takes int32"):
        _convert(text.source, tmp_path / "work2", eval_path=floats, variants=["tflite-fp32"], sandboxed=False)


@pytest.mark.parametrize("how", ["shape", "dtype", "name"])
def test_a_declared_signature_that_is_not_the_models_fails_naming_the_tensor(tmp_path, how):
    """Through the sandbox once (the job-level error crosses result.json), in process otherwise."""
    model = makers_torch.make_torch_family("two_input", tmp_path / "model", labels=False)
    declared = {"input": [dict(e) for e in model.metadata["input"]], "output": model.metadata["output"]}
    if how == "shape":
        declared["input"][1]["shape"] = [1, 5]
        pattern = r"declared input 'features' has shape \[1, 5\] but the model's is \[1, 4\]"
    elif how == "dtype":
        declared["input"][1]["dtype"] = "int32"
        pattern = "declared input 'features' is int32 but the model's is float32"
    else:
        declared["input"][0]["name"] = "picture"
        pattern = "declared input 'picture' is not in the model"
    with pytest.raises(ConversionError, match=pattern):
        _convert(model.source, tmp_path / "work", variants=["tflite-fp32"], declared=declared,
                 sandboxed=how == "shape")


def test_a_dynamic_sequence_length_is_refused_naming_the_input_and_dimension(tmp_path):
    import torch

    module = makers_torch._torch_family_module("text_classifier")
    length = torch.export.Dim("length", min=2, max=64)
    program = torch.export.export(module, (torch.zeros(1, 20, dtype=torch.int32),), dynamic_shapes=({1: length},))
    path = tmp_path / "dynamic.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(ConversionError, match=r"model input 'tokens' has a dynamic dimension 1 .*static shapes only"):
        _convert(path, tmp_path / "work", variants=["tflite-fp32"], sandboxed=False)


# -- one family end to end through a real server ------------------------------------------------


def test_a_two_input_model_is_pushed_converted_promoted_and_loaded_by_the_sdk(tmp_path):
    """Push over HTTP (with its declared signature), convert in the worker's sandbox, promote,
    and let the SDK fetch it over real HTTP and load-check it, feeding every input in its dtype."""
    import json
    import time

    import requests

    from client_sdk import DeviceInfo, ModelClient
    from client_sdk._types import ModelContract, TensorSpec
    from registry.app import create_app
    from tests.helpers import base_settings
    from tests.live import serve_app
    from tests.sdk_origin import fast_config

    model = makers_torch.make_torch_family("two_input", tmp_path / "model")
    app = create_app(base_settings(tmp_path / "server", worker_processes=1, convert_timeout=300), start_workers=True)
    services = app.extensions["modeldrop"]
    admin = (Path(services.settings.data_dir) / "admin-token").read_text().strip()
    headers = {"Authorization": f"Bearer {admin}"}
    try:
        with serve_app(app) as url:
            metadata = {"framework": "pytorch", "variants": ["tflite-fp32"], **model.metadata}
            with open(model.source, "rb") as source, open(model.eval_npz, "rb") as eval_file:
                resp = requests.post(f"{url}/v1/models/two-input/versions", headers=headers, timeout=60,
                                     files={"file": ("model.pt2", source), "eval": ("eval.npz", eval_file)},
                                     data={"metadata": json.dumps(metadata)})
            assert resp.status_code in (200, 201, 202), resp.text
            job_id = resp.json()["job"]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                job = requests.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
                if job["state"] in ("done", "failed"):
                    break
                time.sleep(0.5)
            assert job["state"] == "done", job
            version = requests.get(f"{url}/v1/models/two-input/versions/1", headers=headers, timeout=10).json()
            variants = {v["name"]: v for v in version["variants"]}
            assert variants["tflite-fp32"]["servable"], variants["tflite-fp32"]
            assert list(variants["tflite-fp32"]["fidelity"]["outputs"]) == ["probs"]
            released = requests.post(f"{url}/v1/models/two-input/releases", headers=headers, timeout=10,
                                     json={"version": 1, "channel": "production", "variant": "tflite-fp32"})
            assert released.status_code == 201, released.text
            root = requests.get(f"{url}/tuf/metadata/1.root.json", timeout=10).content
            # The app's contract: a float32 image [1, 3, 16, 16] and a float32 feature vector [1, 4] in,
            # class probabilities out. The SDK checks it against the artifact and runs it on zeros of
            # each input's own dtype.
            contract = ModelContract(inputs=(TensorSpec((1, 3, 16, 16), "float32"), TensorSpec((1, 4), "float32")),
                                     outputs=(TensorSpec((1, 3), "float32"),))
            device = DeviceInfo(platform="android", os_version="14", device_model="pixel7", app_version="2.3.0",
                                region="de")
            client = ModelClient(url, tmp_path / "cache", trusted_root=root, device=device, config=fast_config(),
                                 contracts={"two-input": contract})
            local = client.get_model("two-input", "production")
            assert local.version == 1
            import hashlib

            assert hashlib.sha256(local.path.read_bytes()).hexdigest() == variants["tflite-fp32"]["sha256"]
            from ai_edge_litert.interpreter import Interpreter

            runner = Interpreter(model_path=str(local.path)).get_signature_runner()
            out = runner(**{name: array[:1] for name, array in model.inputs.items()})
            reference = model.reference()["probs"][:1]
            assert np.allclose(out["probs"], reference, atol=1e-5)
            wrong = ModelContract(inputs=(TensorSpec((1, 3, 16, 16), "float32"), TensorSpec((1, 4), "int32")))
            refusing = ModelClient(url, tmp_path / "cache2", trusted_root=root, device=device, config=fast_config(),
                                   contracts={"two-input": wrong})
            with pytest.raises(Exception, match="should be int32"):
                refusing.get_model("two-input", "production")
    finally:
        services.jobs.stop()
