"""Small real Keras models for tests, built in seconds from scikit-learn's bundled digits.

Shared by the conversion tests and by anyone who needs a genuine uploaded model
(.keras / .h5 / zipped SavedModel) plus an evaluation set. TensorFlow is imported
inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_SEED = 0
DIGITS_TRAIN = 1400  # of 1797 samples; the rest (397) is the evaluation set
DIGITS_EPOCHS = 5


@dataclass(frozen=True)
class DigitsModel:
    keras_path: Path
    h5_path: Path
    saved_model_zip: Path
    eval_npz: Path


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_eval, y_eval): 8x8x1 images scaled to [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    x, y = x[order], y[order]
    return x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:], y[DIGITS_TRAIN:]


def train_digits_cnn():
    """A small Sequential CNN (about 24k parameters, ~96% accuracy) trained for a few epochs."""
    import keras

    x_train, y_train, _, _ = digits_data()
    keras.utils.set_random_seed(DIGITS_SEED)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=DIGITS_EPOCHS, batch_size=32, verbose=0)
    return model


def zip_directory(directory: Path, zip_path: Path) -> Path:
    """Zip a directory's contents (paths relative to it), as a user would upload a SavedModel."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return zip_path


def save_all_formats(model, directory: Path, stem: str = "digits") -> tuple[Path, Path, Path]:
    """Save as .keras, .h5 and a zipped SavedModel (``model.export``); returns the three paths."""
    directory.mkdir(parents=True, exist_ok=True)
    keras_path = directory / f"{stem}.keras"
    h5_path = directory / f"{stem}.h5"
    model.save(keras_path)
    model.save(h5_path)
    export_dir = directory / f"{stem}_saved_model"
    model.export(str(export_dir), format="tf_saved_model", verbose=False)
    saved_model_zip = zip_directory(export_dir, directory / f"{stem}_saved_model.zip")
    return keras_path, h5_path, saved_model_zip


def make_eval_npz(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(path, **arrays)
    return path


def make_digits_model(tmp_path: Path) -> tuple[Path, Path]:
    """Train the digits CNN and save it; returns (model_path, eval_npz_path) for the .keras file."""
    models, _ = make_digits_models(tmp_path)
    return models.keras_path, models.eval_npz


def make_digits_models(tmp_path: Path) -> tuple[DigitsModel, object]:
    """Train once and save every upload format; returns (paths, the trained keras model)."""
    model = train_digits_cnn()
    keras_path, h5_path, saved_model_zip = save_all_formats(model, tmp_path)
    _, _, x_eval, y_eval = digits_data()
    eval_npz = make_eval_npz(tmp_path / "digits_eval.npz", x_eval, y_eval)
    return DigitsModel(keras_path, h5_path, saved_model_zip, eval_npz), model


# -- model families: the shapes mobile teams ship (random-initialised, tiny) ---------------

FAMILY_SEED = 7
FAMILY_SAMPLES = 48  # eval samples per family
FAMILIES = ("image_classifier", "detector", "landmarks", "accelerometer", "keyword_spotting",
            "text_classifier", "two_input")
DETECTOR_BOXES, DETECTOR_CLASSES = 4, 3
LANDMARKS = 5  # points, two coordinates each
VOCAB, SEQUENCE = 64, 20  # text classifier: token ids in [0, VOCAB), SEQUENCE of them


@dataclass(frozen=True)
class FamilyModel:
    """One family's saved model, eval set and what the test knows independently of registry."""

    family: str
    source: Path  # the upload
    eval_npz: Path
    inputs: dict  # input name -> eval array (batch first, the input's dtype)
    outputs: tuple  # output names, in the model's order
    tasks: dict  # output name -> "classification" | "regression"
    metadata: dict  # the upload's metadata: declared input/output lists (with tasks)
    model: object  # the in-memory model, for reference outputs computed by the test

    def reference(self) -> dict:
        raise NotImplementedError


def family_inputs(family: str, channels_first: bool = False) -> dict:
    """Eval inputs per family: {input name: (per-sample shape, dtype)} (channels last, as Keras)."""
    image = ((16, 16, 3), "float32")
    specs = {
        "image_classifier": {"image": image},
        "detector": {"image": image},
        "landmarks": {"face": ((16, 16, 1), "float32")},
        "accelerometer": {"window": ((128, 3), "float32")},
        "keyword_spotting": {"spectrogram": ((49, 40, 1), "float32")},
        "text_classifier": {"tokens": ((SEQUENCE,), "int32")},
        "two_input": {"image": image, "features": ((4,), "float32")},
    }[family]
    if channels_first:
        specs = {name: ((shape[-1], *shape[:-1]) if len(shape) == 3 else
                        (shape[::-1] if len(shape) == 2 else shape), dtype)
                 for name, (shape, dtype) in specs.items()}
    return specs


def family_eval_inputs(family: str, channels_first: bool = False) -> dict:
    rng = np.random.default_rng(FAMILY_SEED)
    arrays = {}
    for name, (shape, dtype) in family_inputs(family, channels_first).items():
        if dtype == "int32":
            arrays[name] = rng.integers(0, VOCAB, (FAMILY_SAMPLES, *shape)).astype(np.int32)
        else:
            arrays[name] = rng.random((FAMILY_SAMPLES, *shape), dtype=np.float32)
    return arrays


FAMILY_OUTPUTS = {  # output name -> task, in the model's order
    "image_classifier": {"probs": "classification"},
    "detector": {"boxes": "regression", "scores": "classification"},
    "landmarks": {"points": "regression"},
    "accelerometer": {"activity": "classification"},
    "keyword_spotting": {"keyword": "classification"},
    "text_classifier": {"sentiment": "classification"},
    "two_input": {"probs": "classification"},
}


def _keras_family_model(family: str):
    import keras
    from keras import layers

    keras.utils.set_random_seed(FAMILY_SEED)
    specs = family_inputs(family)
    inputs = {name: keras.Input(shape, dtype=dtype, name=name) for name, (shape, dtype) in specs.items()}

    def conv_features(x, filters=8):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        return layers.GlobalAveragePooling2D()(x)

    if family == "image_classifier":
        outputs = [layers.Dense(5, activation="softmax", name="probs")(conv_features(inputs["image"]))]
    elif family == "detector":
        h = layers.Dense(32, activation="relu")(conv_features(inputs["image"], 16))
        boxes = layers.Reshape((DETECTOR_BOXES, 4), name="boxes")(
            layers.Dense(DETECTOR_BOXES * 4, activation="sigmoid")(h))
        logits = layers.Reshape((DETECTOR_BOXES, DETECTOR_CLASSES))(layers.Dense(DETECTOR_BOXES * DETECTOR_CLASSES)(h))
        outputs = [boxes, layers.Softmax(name="scores")(logits)]
    elif family == "landmarks":
        outputs = [layers.Dense(LANDMARKS * 2, name="points")(conv_features(inputs["face"]))]
    elif family == "accelerometer":
        x = layers.Conv1D(8, 5, strides=2, activation="relu")(inputs["window"])
        x = layers.GlobalAveragePooling1D()(x)
        outputs = [layers.Dense(4, activation="softmax", name="activity")(x)]
    elif family == "keyword_spotting":
        x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs["spectrogram"])
        x = layers.DepthwiseConv2D(3, strides=2, activation="relu")(x)
        outputs = [layers.Dense(6, activation="softmax", name="keyword")(layers.GlobalAveragePooling2D()(x))]
    elif family == "text_classifier":
        x = layers.Embedding(VOCAB, 16)(inputs["tokens"])
        x = layers.GlobalAveragePooling1D()(x)
        outputs = [layers.Dense(2, activation="softmax", name="sentiment")(layers.Dense(16, activation="relu")(x))]
    elif family == "two_input":
        h = layers.Concatenate()([conv_features(inputs["image"]), inputs["features"]])
        outputs = [layers.Dense(3, activation="softmax", name="probs")(h)]
    else:
        raise ValueError(family)
    return keras.Model(list(inputs.values()), outputs)


def family_metadata(inputs: dict, reference: dict, tasks: dict, batch=None) -> dict:
    """The declared signature an engineer would upload (batch dimension included)."""
    return {
        "input": [{"name": name, "dtype": str(a.dtype), "shape": [batch, *a.shape[1:]]} for name, a in inputs.items()],
        "output": [{"name": name, "dtype": "float32", "shape": [batch, *reference[name].shape[1:]],
                    "task": tasks[name]} for name in tasks],
    }


class KerasFamily(FamilyModel):
    def reference(self) -> dict:
        values = self.model([self.inputs[name] for name in self.inputs], training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return {name: np.asarray(v) for name, v in zip(self.outputs, values)}


def make_keras_family(family: str, directory: Path, *, suffix: str = ".keras", labels: bool = True) -> KerasFamily:
    """Build, save (``.keras`` or ``.h5``) and write an eval set with one array per input;
    classification outputs get labels ``y__<output>`` (the source's own top-1 on a
    random half, another class on the rest, so accuracy is neither 0 nor 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = _keras_family_model(family)
    source = directory / f"{family}{suffix}"
    model.save(source)
    inputs = family_eval_inputs(family)
    outputs = tuple(FAMILY_OUTPUTS[family])
    probe = KerasFamily(family, source, directory, inputs, outputs, dict(FAMILY_OUTPUTS[family]), {}, model)
    reference = probe.reference()
    arrays = dict(inputs)
    if labels:
        arrays.update(family_labels(reference, FAMILY_OUTPUTS[family]))
    eval_npz = directory / f"{family}_eval.npz"
    np.savez(eval_npz, **arrays)
    metadata = family_metadata(inputs, reference, FAMILY_OUTPUTS[family])
    return KerasFamily(family, source, eval_npz, inputs, outputs, dict(FAMILY_OUTPUTS[family]), metadata, model)


def family_labels(reference: dict, tasks: dict) -> dict:
    rng = np.random.default_rng(FAMILY_SEED + 1)
    labels = {}
    for name, task in tasks.items():
        if task != "classification":
            continue
        top1 = reference[name].argmax(axis=-1)
        flip = rng.random(top1.shape) < 0.3
        labels[f"y__{name}"] = np.where(flip, (top1 + 1) % reference[name].shape[-1], top1).astype(np.int64)
    return labels
