"""PyTorch uploads (.pt2 from torch.export.save, .pt from torch.jit.save) through the sandbox.

Every conversion goes through the job's sandboxed path (``registry.jobs.conversion``), as
in tests/test_convert.py. The recorded fidelity of every TFLite variant is recomputed here:
the test runs the real LiteRT interpreter on the published artifact itself and compares it
with the in-memory torch model's outputs (not the converter's). Core ML packages are
reloaded and their float32 weights compared with the torch module's parameters.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from registry.config import Settings
from registry.convert import VARIANT_NAMES, VARIANTS, ConversionError
from registry.jobs.conversion import convert_file
from tests import makers_torch
from tests.test_convert import _assert_fidelity, _coreml_weights, _expected_fidelity, _interpreter_outputs

pytestmark = pytest.mark.slow

PT_VARIANTS = ["tflite-fp32", "tflite-int8-dynamic", "coreml-fp32"]


def _convert(source, workdir: Path, *, eval_path=None, variants=None, max_parallel=2):
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings.load({"data_dir": workdir / "data", "latency_runs": 10,
                              "convert_max_parallel": max_parallel, "convert_sandbox": "required"}, environ={})
    return convert_file(settings, source, workdir / "job", eval_path=eval_path, variants=variants)


@pytest.fixture(scope="module")
def torch_digits(tmp_path_factory):
    import torch

    paths, model = makers_torch.make_torch_digits(tmp_path_factory.mktemp("torch-digits"))
    with torch.no_grad():
        reference = model(torch.from_numpy(paths.x_eval)).numpy()
    return {"paths": paths, "model": model, "reference": reference}


@pytest.fixture(scope="module")
def pt2_all(torch_digits, tmp_path_factory):
    """Every variant from the .pt2 upload, in the sandbox with two workers."""
    paths = torch_digits["paths"]
    return _convert(paths.pt2_path, tmp_path_factory.mktemp("pt2"), eval_path=paths.eval_npz)


@pytest.fixture(scope="module")
def pt_subset(torch_digits, tmp_path_factory):
    """TorchScript: its input shape comes from the eval set; converted in one process."""
    paths = torch_digits["paths"]
    return _convert(paths.pt_path, tmp_path_factory.mktemp("pt"), eval_path=paths.eval_npz,
                    variants=PT_VARIANTS, max_parallel=1)


def test_pt2_builds_every_variant_servable(pt2_all):
    assert [r.name for r in pt2_all] == list(VARIANT_NAMES)
    for result in pt2_all:
        assert result.error is None, (result.name, result.error)
        assert result.servable, (result.name, result.reason)
        assert result.path.is_file() and result.path.stat().st_size == result.size
    tflite = {r.name: r for r in pt2_all if r.format == "tflite"}
    assert tflite["tflite-fp32"].size > tflite["tflite-fp16"].size > tflite["tflite-int8-dynamic"].size
    for result in tflite.values():
        assert result.reference_latency_ms["runs"] == 10 and result.reference_latency_ms["p50"] > 0


@pytest.mark.parametrize("which", ["pt2", "pt"])
def test_tflite_fidelity_is_measured_against_the_torch_model(which, pt2_all, pt_subset, torch_digits):
    results = pt2_all if which == "pt2" else pt_subset
    paths, reference = torch_digits["paths"], torch_digits["reference"]
    for result in results:
        if result.format != "tflite":
            continue
        outputs, inp = _interpreter_outputs(result.path, paths.x_eval)
        expected = _expected_fidelity(outputs, reference, paths.y_eval)
        _assert_fidelity(result.fidelity, expected)
        assert result.fidelity["eval_source"] == "uploaded"
        assert tuple(inp["shape"]) == (1, 1, 8, 8)
        if result.name == "tflite-fp32":
            assert result.fidelity["max_abs_error"] < 1e-4  # the same float32 math as torch
        if result.name == "tflite-int8-full":
            assert inp["dtype"] == np.int8  # calibrated int8 in and out, as for Keras
        assert result.fidelity["accuracy"] > 0.85


def test_pt_subset_converts(pt_subset):
    assert [r.name for r in pt_subset] == PT_VARIANTS
    assert all(r.servable and r.error is None for r in pt_subset), [(r.name, r.error) for r in pt_subset]


def test_coreml_float32_weights_are_the_torch_parameters(pt2_all, torch_digits, tmp_path):
    (fp32,) = [r for r in pt2_all if r.name == "coreml-fp32"]
    spec, weights = _coreml_weights(fp32.path, tmp_path)
    # The program's own input name (nn.Sequential's forward parameter); an unnamed output is output_0.
    assert [f.name for f in spec.description.input] == ["input"]
    assert tuple(spec.description.input[0].type.multiArrayType.shape) == (1, 1, 8, 8)
    assert [f.name for f in spec.description.output] == ["output_0"]
    params = [p.detach().numpy().astype(np.float32) for p in torch_digits["model"].parameters()]
    found = [w.astype(np.float32) for w, _, _ in weights if w.size > 1]
    big = [p for p in params if p.size > 1]
    for param in big:
        assert any(w.shape == param.shape and np.array_equal(w, param) for w in found), param.shape
    weight_errors = {r.name: r.fidelity["weight_rel_error"] for r in pt2_all if r.format == "coreml"}
    assert weight_errors["coreml-fp32"] == 0.0
    assert 0 < weight_errors["coreml-fp16"] < weight_errors["coreml-int8"] < weight_errors["coreml-palettized-4bit"]


def test_a_pt2_that_is_not_one_fails_with_a_clear_error(tmp_path):
    fake = tmp_path / "model.pt2"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("model/readme.txt", "a zip, but not a torch.export archive")
    with pytest.raises(ConversionError, match="is not a torch.export ExportedProgram"):
        _convert(fake, tmp_path / "work", variants=["tflite-fp32"], max_parallel=1)
    text = tmp_path / "text.pt2"
    text.write_text("not even a zip")
    with pytest.raises(ConversionError, match="not a zip archive"):
        _convert(text, tmp_path / "work2", variants=["tflite-fp32"], max_parallel=1)


def test_a_dynamic_dimension_is_refused_naming_it(tmp_path):
    dynamic = makers_torch.dynamic_batch_pt2(tmp_path / "dynamic.pt2")
    with pytest.raises(ConversionError, match=r"dynamic dimension 0 .*static shapes only"):
        _convert(dynamic, tmp_path / "work", variants=["tflite-fp32"], max_parallel=1)


def test_torchscript_without_an_eval_set_says_what_is_missing(torch_digits, tmp_path):
    with pytest.raises(ConversionError, match="does not record its input shape"):
        _convert(torch_digits["paths"].pt_path, tmp_path / "work", variants=["tflite-fp32"], max_parallel=1)


def test_catalogue_lists_torch_formats():
    from registry.convert import SOURCE_FORMATS

    assert ".pt2" in SOURCE_FORMATS and ".pt" in SOURCE_FORMATS
    assert all(VARIANTS[n].format in ("tflite", "coreml") for n in VARIANT_NAMES)


def test_a_worker_without_the_torch_toolchain_says_so(torch_digits, tmp_path, monkeypatch):
    """A deployment whose conversion image holds only TensorFlow: the job's error names what is
    missing instead of a bare ImportError. (In this process: the import fails before anything loads.)"""
    import sys

    from registry.convert import convert_version as convert_in_this_process

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # "import litert_torch" now raises ImportError
    with pytest.raises(ConversionError, match="toolchain_missing: .pt2 is a PyTorch upload") as raised:
        convert_in_this_process(torch_digits["paths"].pt2_path, tmp_path / "work", variants=["tflite-fp32"],
                                max_parallel=1)
    assert raised.value.code == "toolchain_missing" and "litert_torch" in str(raised.value)
