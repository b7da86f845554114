"""Engineers' own artifacts, built in the test: a TFLite flatbuffer from a tiny Keras model
(the real TFLite converter), a Core ML mlprogram package and a neural-network ``.mlmodel``
(coremltools' MIL builder and NeuralNetworkBuilder: no conversion from another framework),
and hostile variants of each."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def make_tflite(path: Path, *, inputs: int = 8, classes: int = 4, seed: int = 0) -> Path:
    """A float32 dense classifier ([1, inputs] -> softmax [1, classes]) as a .tflite file."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((inputs,), name="x"), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(classes, activation="softmax")])
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def make_mlpackage_zip(path: Path, *, inputs: int = 8, classes: int = 4) -> Path:
    """A float32 mlprogram (linear + softmax) saved as <stem>.mlpackage and zipped."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    weight = np.random.default_rng(0).random((classes, inputs)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, inputs))])
    def program(x):
        return mb.softmax(x=mb.linear(x=x, weight=weight), axis=-1, name="probs")

    mlmodel = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32)
    package = path.parent / "build" / (path.name.removesuffix(".zip"))
    package.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(package))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:  # as Finder zips it: the folder inside
        for member in sorted(package.rglob("*")):
            if member.is_file():
                archive.write(member, f"{package.name}/{member.relative_to(package).as_posix()}")
    return path


def make_mlmodel(path: Path, *, inputs: int = 8, classes: int = 4) -> Path:
    """A neural-network .mlmodel (one inner product), float32 arrays in and out."""
    import coremltools as ct
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.proto import FeatureTypes_pb2

    builder = NeuralNetworkBuilder([("x", datatypes.Array(inputs))], [("y", datatypes.Array(classes))])
    builder.add_inner_product("dense", W=np.ones((classes, inputs), np.float32), b=None,
                              input_channels=inputs, output_channels=classes, has_bias=False,
                              input_name="x", output_name="y")
    spec = builder.spec
    for feature in [*spec.description.input, *spec.description.output]:
        feature.type.multiArrayType.dataType = FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    ct.models.utils.save_spec(spec, str(path))
    return path


def garbage_after_magic(path: Path) -> Path:
    """Passes the upload's header check (TFL3 at bytes 4-8), then is noise."""
    rng = np.random.default_rng(7)
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + rng.bytes(4096))
    return path


def zip_slip_package(path: Path) -> Path:
    """A zipped package whose second member climbs out of the extraction folder."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m.mlpackage/Manifest.json", "{}")
        archive.writestr("m.mlpackage/../../escaped.txt", "out")
    return path


def huge_declared_package(path: Path, declared: int) -> Path:
    """A valid-looking package zip whose one weight member expands (really) to ``declared``
    bytes of zeros: a few KB on disk, a zip bomb to extract."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m.mlpackage/Manifest.json", "{}")
        with archive.open("m.mlpackage/Data/com.apple.CoreML/weights/weight.bin", "w", force_zip64=True) as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(declared // len(chunk)):
                fh.write(chunk)
    return path


def make_keras_classifier(path: Path, *, inputs: int = 8, classes: int = 4, seed: int = 0):
    """A small functional Keras classifier (input ``features``, softmax output ``probs``),
    saved to ``path`` (.keras); returns the live model too, to convert or predict with."""
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(x)
    model = keras.Model(x, keras.layers.Dense(classes, activation="softmax", name="probs")(hidden))
    model.save(path)
    return model


def tflite_of(model, path: Path) -> Path:
    """What an engineer converts by hand: ``TFLiteConverter.from_keras_model`` (its output is
    called ``output_0``, not the model's output name)."""
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path
