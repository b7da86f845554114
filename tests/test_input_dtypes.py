"""Input dtypes at the edge of what the converters take, with small Keras models built here.

A uint8 input (raw pixels) converts to TFLite, where the interpreter takes uint8, but cannot
be a Core ML multi-array (Core ML takes uint8 only as an image): the Core ML variants fail
alone, naming the input, and the TFLite variant is still built and servable. A string input
(a text model taking raw strings, a SavedModel serving serialized examples) is refused before
anything is built, naming the input and the dtypes that are supported. Both run the real
engine in this process (the sandbox adds nothing to what is checked here and costs a
converter boot per job; tests/test_model_families.py sends a ConversionError through it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registry.convert import ConversionError, convert_version
from tests import makers_keras

pytestmark = pytest.mark.slow

SUPPORTED = "supported dtypes are float32, float16, int32, int64, uint8, bool"


def _uint8_classifier(path: Path):
    import keras

    keras.utils.set_random_seed(3)
    pixels = keras.Input((6, 6, 1), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(keras.ops.cast(pixels, "float32"))
    x = keras.layers.Dense(5, activation="relu")(keras.layers.Flatten()(x))
    model = keras.Model(pixels, keras.layers.Dense(3, activation="softmax", name="probs")(x))
    model.save(path)
    return model


def test_a_uint8_input_fails_the_core_ml_variants_alone_and_tflite_still_serves_it(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = _uint8_classifier(tmp_path / "pixels.keras")
    results = {r.name: r for r in convert_version(
        tmp_path / "pixels.keras", tmp_path / "work", variants=["tflite-fp32", "coreml-fp32", "coreml-fp16"],
        latency_runs=3, max_parallel=1)}
    for name in ("coreml-fp32", "coreml-fp16"):
        result = results[name]
        assert not result.servable and result.path is None, (name, result)
        assert "input 'pixels' is uint8, which Core ML multi-arrays cannot take (a uint8 tensor needs an " \
               "image input)" in result.error, (name, result.error)
        assert result.reason == result.error
    assert not list((tmp_path / "work" / "variants").glob("coreml-*"))
    tflite = results["tflite-fp32"]
    assert tflite.servable and tflite.error is None, tflite.reason
    assert tflite.signature["inputs"] == [{"name": "pixels", "dtype": "uint8", "shape": [None, 6, 6, 1]}]
    assert tflite.fidelity["eval_source"] == "synthetic" and tflite.fidelity["top1_agreement"] == 1.0
    # The published file takes raw uint8 pixels and computes what the Keras model does.
    runner = Interpreter(model_path=str(tflite.path)).get_signature_runner()
    pixels = np.random.default_rng(5).integers(0, 256, (4, 6, 6, 1)).astype(np.uint8)
    got = np.concatenate([runner(pixels=pixels[i:i + 1])["probs"] for i in range(len(pixels))])
    np.testing.assert_allclose(got, np.asarray(model(pixels)), rtol=1e-5, atol=1e-6)


def test_a_keras_model_with_a_string_input_is_refused_naming_it(tmp_path):
    import keras

    text = keras.Input((1,), dtype="string", name="text")
    ids = keras.layers.StringLookup(vocabulary=["red", "green", "blue"])(text)
    model = keras.Model(text, keras.layers.Dense(2, name="scores")(keras.ops.cast(ids, "float32")))
    model.save(tmp_path / "text.keras")
    with pytest.raises(ConversionError, match=f"^model input 'text' is string; {SUPPORTED}$"):
        convert_version(tmp_path / "text.keras", tmp_path / "work", variants=["tflite-fp32", "coreml-fp32"],
                        latency_runs=3, max_parallel=1)
    assert not (tmp_path / "work" / "variants").exists() or not list((tmp_path / "work" / "variants").iterdir())


def test_a_saved_model_serving_strings_is_refused_naming_the_input(tmp_path):
    import tensorflow as tf

    class Lengths(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.string, name="sentence")])
        def serve(self, sentence):
            return {"length": tf.cast(tf.strings.length(sentence), tf.float32)}

    module = Lengths()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.serve})
    source = makers_keras.zip_directory(tmp_path / "saved", tmp_path / "strings.zip")
    with pytest.raises(ConversionError, match=f"'sentence' is string; {SUPPORTED}$"):
        convert_version(source, tmp_path / "work", variants=["tflite-fp32"], latency_runs=3, max_parallel=1)
