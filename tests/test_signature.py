"""I/O signatures: read from real artifacts, carried through the sandbox, validated by the worker.

The readers (registry.convert._signature) are run on artifacts built here with the real
converters (TensorFlow's TFLite converter, coremltools from a torch.export program) and
their answers are compared with what the test itself built. The worker's validator
(registry.jobs.results.validate_signature) gets forged documents: each bad one fails
that variant only.
"""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest

from registry.jobs.results import InvalidResultError, accept_variants, validate_signature

GOOD = {"inputs": [{"name": "tokens", "dtype": "int32", "shape": [1, 16], "narrowed_from": "int64"},
                   {"name": "image", "dtype": "float32", "shape": [None, 28, 28, 1]}],
        "outputs": [{"name": "boxes", "dtype": "float32", "shape": [1, 10, 4]},
                    {"name": "scores", "dtype": "float32", "shape": None}]}


# -- the validator --------------------------------------------------------------------------


def test_a_good_signature_comes_back_equal():
    assert validate_signature(copy.deepcopy(GOOD)) == GOOD
    assert validate_signature(None) is None


def _forged(path, value):
    forged = copy.deepcopy(GOOD)
    target = forged
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return forged


@pytest.mark.parametrize("path,value", [
    (("inputs",), []),  # no inputs
    (("inputs",), [GOOD["inputs"][1]] * 2),  # duplicate name
    (("inputs",), [{"name": f"t{i}", "dtype": "float32", "shape": [1]} for i in range(65)]),
    (("outputs",), {"name": "x"}),
    (("inputs", 0, "name"), ""),
    (("inputs", 0, "name"), "a" * 129),
    (("inputs", 0, "name"), "bad\nname"),
    (("inputs", 0, "name"), " padded"),
    (("inputs", 0, "name"), "ünïcode"),
    (("inputs", 0, "name"), 7),
    (("inputs", 0, "dtype"), "float64"),
    (("inputs", 0, "dtype"), "string"),
    (("inputs", 0, "dtype"), None),
    (("inputs", 0, "shape"), [1, 0]),
    (("inputs", 0, "shape"), [1, -1]),
    (("inputs", 0, "shape"), [1, 2.0]),
    (("inputs", 0, "shape"), [1, True]),
    (("inputs", 0, "shape"), [1, "16"]),
    (("inputs", 0, "shape"), [1] * 9),
    (("inputs", 0, "shape"), [1, 1 << 40]),
    (("inputs", 0, "shape"), "1,16"),
    (("inputs", 0, "narrowed_from"), "int32"),  # not wider than what it is
    (("inputs", 0, "narrowed_from"), "uint4"),
    (("inputs", 0, "extra"), "x"),
    (("inputs", 0, "dtype"), KeyError),
    (("outputs",), KeyError),
    (("extra",), []),
])
def test_a_forged_signature_is_refused(path, value):
    with pytest.raises(InvalidResultError):
        validate_signature(_forged(path, value))


def test_a_bad_signature_fails_that_variant_only(tmp_path):
    work, accepted = tmp_path / "work", tmp_path / "accepted"
    (work / "out" / "variants").mkdir(parents=True)
    accepted.mkdir()
    entries = []
    for name, signature in (("tflite-fp32", GOOD), ("tflite-fp16", _forged(("inputs", 0, "dtype"), "complex64")),
                            ("tflite-int8-dynamic", None)):
        body = f"bytes of {name}".encode()
        (work / "out" / "variants" / f"{name}.tflite").write_bytes(body)
        entries.append({"name": name, "format": "tflite", "file": f"out/variants/{name}.tflite",
                        "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                        "fidelity": {"top1_agreement": 1.0, "outputs": {"boxes": {"max_abs_error": 0.0}}},
                        "servable": True, "signature": signature})
    document = json.loads(json.dumps({"error": None, "variants": entries}))
    results = {r.name: r for r in accept_variants(document, ["tflite-fp32", "tflite-fp16", "tflite-int8-dynamic"],
                                                  work, accepted, max_artifact_bytes=1 << 20)}
    assert results["tflite-fp32"].servable and results["tflite-fp32"].signature == GOOD
    assert results["tflite-fp32"].fidelity["outputs"] == {"boxes": {"max_abs_error": 0.0}}
    assert results["tflite-fp16"].error and "rejected" in results["tflite-fp16"].error
    assert not results["tflite-fp16"].servable and results["tflite-fp16"].path is None
    assert results["tflite-int8-dynamic"].servable and results["tflite-int8-dynamic"].signature is None


@pytest.mark.parametrize("outputs", [
    {"bad\nname": {"x": 1.0}},
    {"scores": {"nested": {"deeper": 1}}},
    {"scores": {"x": float("nan")}},
    {f"o{i}": {} for i in range(65)},
    ["scores"],
])
def test_forged_per_output_fidelity_fails_the_variant(tmp_path, outputs):
    work, accepted = tmp_path / "work", tmp_path / "accepted"
    (work / "out" / "variants").mkdir(parents=True)
    accepted.mkdir()
    body = b"tflite"
    (work / "out" / "variants" / "tflite-fp32.tflite").write_bytes(body)
    entry = {"name": "tflite-fp32", "format": "tflite", "file": "out/variants/tflite-fp32.tflite",
             "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
             "fidelity": {"top1_agreement": 1.0, "outputs": outputs}, "servable": True, "signature": GOOD}
    (result,) = accept_variants({"variants": [entry]}, ["tflite-fp32"], work, accepted, max_artifact_bytes=1 << 20)
    assert result.error and not result.servable


# -- the readers, on real artifacts -----------------------------------------------------------


@pytest.fixture(scope="module")
def keras_two_in_two_out_tflite(tmp_path_factory):
    """A Keras model with an int32 token input and a float input, two named outputs."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("sig-keras")
    tokens = keras.Input((16,), dtype="int32", name="tokens")
    feats = keras.Input((4,), name="feats")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
    hidden = keras.layers.Concatenate()([pooled, feats])
    model = keras.Model([tokens, feats], {"probs": keras.layers.Dense(3, activation="softmax", name="probs")(hidden),
                                          "score": keras.layers.Dense(1, name="score")(hidden)})
    model.export(str(root / "sm"), format="tf_saved_model", verbose=False)
    path = root / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(root / "sm")).convert())
    return path


def test_tflite_signature_reads_names_dtypes_and_free_dims(keras_two_in_two_out_tflite):
    from registry.convert._signature import tflite_signature

    signature = tflite_signature(keras_two_in_two_out_tflite)
    assert sorted(signature["inputs"], key=lambda e: e["name"]) == [
        {"name": "feats", "dtype": "float32", "shape": [None, 4]},
        {"name": "tokens", "dtype": "int32", "shape": [None, 16]}]
    assert sorted(signature["outputs"], key=lambda e: e["name"]) == [
        {"name": "probs", "dtype": "float32", "shape": [None, 3]},
        {"name": "score", "dtype": "float32", "shape": [None, 1]}]
    assert validate_signature(signature) == signature  # what the reader says passes the worker's check


def test_tflite_signature_refuses_a_file_that_is_not_one(tmp_path):
    from registry.convert._signature import SignatureError, tflite_signature

    path = tmp_path / "x.tflite"
    path.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(SignatureError):
        tflite_signature(path)


class _TwoHeads:
    """A torch module with an image input and an int64 id input, two outputs."""

    @staticmethod
    def build():
        import torch

        class TwoHeads(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3)
                self.head = torch.nn.Linear(4, 2)

            def forward(self, image, ids):
                return self.head(self.conv(image).mean((2, 3))), ids * 2

        torch.manual_seed(0)
        return TwoHeads().eval()


@pytest.fixture(scope="module")
def coreml_artifacts(tmp_path_factory):
    import coremltools as ct
    import torch

    from registry.convert._coreml import zip_package

    root = tmp_path_factory.mktemp("sig-coreml")
    module = _TwoHeads.build()
    args = (torch.zeros(1, 3, 8, 8), torch.zeros(1, 5, dtype=torch.int64))
    program = torch.export.export(module, args).run_decompositions({})
    package = ct.convert(program, convert_to="mlprogram",
                         inputs=[ct.ImageType(name="image", shape=(1, 3, 8, 8)),
                                 ct.TensorType(name="ids", shape=(1, 5), dtype=np.int32)],
                         outputs=[ct.TensorType(name="logits"), ct.TensorType(name="doubled")])
    package.save(str(root / "m.mlpackage"))
    zip_package(root / "m.mlpackage", root / "m.mlpackage.zip")
    traced = torch.jit.trace(module, args)  # a range dimension needs the TorchScript path
    flexible = ct.convert(traced, convert_to="mlprogram",
                          inputs=[ct.TensorType(name="image", shape=(1, 3, 8, 8)),
                                  ct.TensorType(name="ids", shape=(1, ct.RangeDim(1, 32, default=5)),
                                                dtype=np.int32)],
                          outputs=[ct.TensorType(name="logits"), ct.TensorType(name="doubled")],
                          compute_precision=ct.precision.FLOAT16,
                          minimum_deployment_target=ct.target.iOS16)
    flexible.save(str(root / "flex.mlpackage"))
    legacy = ct.convert(traced, convert_to="neuralnetwork",
                        inputs=[ct.TensorType(name="image", shape=(1, 3, 8, 8)),
                                ct.TensorType(name="ids", shape=(1, 5), dtype=np.int32)])
    legacy.save(str(root / "m.mlmodel"))
    return root


@pytest.mark.parametrize("which", ["m.mlpackage", "m.mlpackage.zip"])
def test_coreml_signature_of_a_package_directory_and_its_zip(coreml_artifacts, which):
    from registry.convert._signature import coreml_signature

    signature = coreml_signature(coreml_artifacts / which)
    assert signature == {
        "inputs": [{"name": "image", "dtype": "uint8", "shape": [1, 3, 8, 8]},  # an image input
                   {"name": "ids", "dtype": "int32", "shape": [1, 5]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 2]},
                    {"name": "doubled", "dtype": "int32", "shape": [1, 5]}]}
    assert validate_signature(signature) == signature


def test_coreml_signature_of_flexible_float16_and_legacy_models(coreml_artifacts):
    from registry.convert._signature import coreml_signature

    flexible = coreml_signature(coreml_artifacts / "flex.mlpackage")
    inputs = {e["name"]: e for e in flexible["inputs"]}
    assert inputs["ids"]["shape"] == [1, None] and inputs["ids"]["dtype"] == "int32"
    assert inputs["image"] == {"name": "image", "dtype": "float16", "shape": [1, 3, 8, 8]}
    legacy = coreml_signature(coreml_artifacts / "m.mlmodel")
    assert [e["name"] for e in legacy["inputs"]] == ["image", "ids"]
    # A neuralnetwork model takes float arrays and leaves its output shapes unspecified.
    assert all(e["dtype"] == "float32" for e in legacy["inputs"] + legacy["outputs"])
    assert all(e["shape"] is None for e in legacy["outputs"])
    assert validate_signature(legacy) == legacy


def test_coreml_signature_refuses_a_zip_without_one_package(tmp_path):
    import zipfile

    from registry.convert._signature import SignatureError, coreml_signature

    path = tmp_path / "x.mlpackage.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no package here")
    with pytest.raises(SignatureError, match="exactly one .mlpackage"):
        coreml_signature(path)


def test_narrowed_tensors_are_marked_against_the_source():
    from registry.convert._signature import mark_narrowed

    source = {"inputs": [{"name": "ids", "dtype": "int64", "shape": [1, 5]},
                         {"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8]}],
              "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 2]}]}
    artifact = {"inputs": [{"name": "ids", "dtype": "int32", "shape": [1, 5]},
                           {"name": "image", "dtype": "int8", "shape": [1, 3, 8, 8]}],  # quantized, not narrowed
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 2]}]}
    marked = mark_narrowed(copy.deepcopy(artifact), source)
    assert marked["inputs"][0] == {"name": "ids", "dtype": "int32", "shape": [1, 5], "narrowed_from": "int64"}
    assert "narrowed_from" not in marked["inputs"][1] and "narrowed_from" not in marked["outputs"][0]
    assert validate_signature(marked) == marked


def test_a_declaration_is_checked_against_an_artifact_signature_dict():
    """The rules provided artifacts are held to (registry.convert._provided): names, dtypes,
    ranks and known dimensions; a shape the artifact does not say (a Core ML array with no
    shape: None) is checked by name and dtype only."""
    from registry.convert import ConversionError
    from registry.convert._source import check_declared_signature

    artifact = {"inputs": [{"name": "image", "dtype": "float32", "shape": [None, 8, 8, 3]}],
                "outputs": [{"name": "scores", "dtype": "float32", "shape": None}]}
    good = {"input": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8, 3]}],
            "output": [{"name": "scores", "dtype": "float32", "shape": [1, 10]}]}
    check_declared_signature(artifact, good)
    check_declared_signature(artifact, {"input": [], "output": []})  # nothing declared: nothing to check
    for declared, message in (
            ({"output": [{"name": "scores", "dtype": "float16", "shape": [1, 10]}]},
             "declared output 'scores' is float16 but the model's is float32"),
            ({"input": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8]}]},
             r"declared input 'image' has shape \[1, 8, 8\] but the model's is \[null, 8, 8, 3\]"),
            ({"input": [{"name": "image", "shape": [1, 8, 8, 3]}, {"name": "mask", "shape": [1, 8]}]},
             "declared input 'mask' is not in the model, whose inputs are 'image'"),
            ({"output": [{"name": "boxes", "shape": [1, 4]}]}, "declared output 'boxes' is not in the model")):
        with pytest.raises(ConversionError, match=message):
            check_declared_signature(artifact, declared)
