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
