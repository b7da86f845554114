"""`modeldrop example digits`: a first model to push, made on this machine in seconds.

A newcomer needs a model file, its ``meta.json`` and an evaluation set before the first
``modeldrop push``; this writes all three from scikit-learn's bundled 8x8 digits (no
downloads). TensorFlow is imported only inside the command, so the rest of the CLI (and the
web process, which never imports this module's dependencies) stays light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

__all__ = ["DEFAULT_VARIANTS", "register", "train_digits", "train_digits_torch"]

# A few variants of each format keep the first conversion under a minute; drop the
# "variants" field from meta.json to get all of them (docs/conversion.md).
DEFAULT_VARIANTS = ["tflite-fp32", "tflite-int8-dynamic", "coreml-fp16"]
TRAIN_SAMPLES = 1400  # of 1,797; the rest is the evaluation set


def register(main: click.Group) -> None:
    main.add_command(example)


@click.group()
def example() -> None:
    """Make a first model, its metadata and an evaluation set, ready to push."""


@example.command("digits")
@click.option("--framework", type=click.Choice(["keras", "pytorch"]), default="keras", show_default=True,
              help="keras writes model.keras; pytorch writes model.pt2 (torch.export.save).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("./digits-example"), show_default=True,
              help="Directory for the model, meta.json and eval.npz (created if missing).")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1, 200),
              help="Training epochs (10 take a few seconds on a laptop CPU).")
@click.option("--seed", default=1, show_default=True, type=int,
              help="Random seed; another seed gives different bytes, so a new version.")
def example_digits(framework: str, out_dir: Path, epochs: int, seed: int) -> None:
    """Train a small digits classifier (scikit-learn's bundled 8x8 digits, no downloads).

    Writes OUT/model.keras (or OUT/model.pt2 with --framework pytorch), OUT/meta.json (labels,
    tensor shapes, measured accuracy, a short variant list) and OUT/eval.npz (held-out images x
    and labels y), then prints the push command.
    """
    train = train_digits if framework == "keras" else train_digits_torch
    try:
        paths = train(out_dir, epochs=epochs, seed=seed)
    except ImportError as e:
        raise click.ClickException(
            f"{e.name or e} is missing: install the converter extra "
            "(.venv/bin/pip install -e '.[convert]')") from e
    meta = json.loads(paths["metadata"].read_text())
    click.echo(f"trained a digits classifier: accuracy {meta['accuracy']['top1']:.3f} on "
               f"{meta['extra']['eval_samples']} held-out digits")
    for kind in ("model", "metadata", "eval"):
        click.echo(f"  {kind:<8} {paths[kind]}")
    name = "digits" if framework == "keras" else "digits-torch"
    click.echo(f"next: modeldrop push {name} {paths['model']} --metadata {paths['metadata']} "
               f"--eval {paths['eval']} --wait")


def train_digits(out_dir: Path, *, epochs: int = 10, seed: int = 1) -> dict[str, Path]:
    """Train and save the example; returns the paths of model, metadata and eval set.

    Raises:
        ImportError: Keras or scikit-learn is not installed (the ``[convert]`` extra).
    """
    # TensorFlow's start-up banner; oneDNN is only announced (on stderr) when left unset.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras
    import numpy as np
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="input"),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        # The output is named as meta.json declares it (a Sequential output takes its layer's name).
        keras.layers.Dense(10, activation="softmax", name="probabilities"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES], epochs=epochs, batch_size=32, verbose=0)
    x_eval, y_eval = x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:]
    predicted = np.argmax(model.predict(x_eval, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == y_eval))

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / "model.keras", "metadata": out_dir / "meta.json",
             "eval": out_dir / "eval.npz"}
    model.save(paths["model"])
    np.savez(paths["eval"], x=x_eval, y=y_eval)
    metadata = {
        "framework": "keras",
        "description": "8x8 handwritten digits (scikit-learn's bundled set), "
                       "made by `modeldrop example digits`",
        "tags": ["example"],
        "labels": [str(i) for i in range(10)],
        "input": [{"name": "input", "shape": [None, 8, 8, 1], "dtype": "float32"}],
        "output": [{"name": "probabilities", "shape": [None, 10], "dtype": "float32"}],
        "accuracy": {"top1": round(accuracy, 4)},
        "variants": DEFAULT_VARIANTS,
        "extra": {"seed": seed, "epochs": epochs, "eval_samples": int(len(y_eval))},
    }
    paths["metadata"].write_text(json.dumps(metadata, indent=2) + "\n")
    return paths


def train_digits_torch(out_dir: Path, *, epochs: int = 10, seed: int = 1) -> dict[str, Path]:
    """The same example in PyTorch, saved with ``torch.export.save`` as OUT/model.pt2.

    Images are channels first ([N, 1, 8, 8]), as PyTorch convolutions take them; eval.npz
    holds them that way too.

    Raises:
        ImportError: torch or scikit-learn is not installed (the ``[convert]`` extra).
    """
    import numpy as np
    import torch
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    from torch import nn

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    torch.manual_seed(seed)
    # nn.MaxPool2d rather than F.max_pool2d(x, 2): the latter fails under torch.export.
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 10), nn.Softmax(dim=-1))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    x_train, y_train = torch.from_numpy(x[:TRAIN_SAMPLES]), torch.from_numpy(y[:TRAIN_SAMPLES])
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(TRAIN_SAMPLES, generator=order).split(32):
            optimiser.zero_grad()
            loss = nn.functional.nll_loss(torch.log(model(x_train[batch]) + 1e-9), y_train[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    x_eval, y_eval = x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:]
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_eval)).argmax(dim=1).numpy()
    accuracy = float(np.mean(predicted == y_eval))

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / "model.pt2", "metadata": out_dir / "meta.json", "eval": out_dir / "eval.npz"}
    # Exported with batch 1: litert-torch converts static shapes only (docs/conversion.md).
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(paths["model"]))
    np.savez(paths["eval"], x=x_eval, y=y_eval)
    metadata = {
        "framework": "pytorch",
        "description": "8x8 handwritten digits (scikit-learn's bundled set), "
                       "made by `modeldrop example digits --framework pytorch`",
        "tags": ["example"],
        "labels": [str(i) for i in range(10)],
        "input": [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}],
        "output": [{"name": "probabilities", "shape": [1, 10], "dtype": "float32"}],
        "accuracy": {"top1": round(accuracy, 4)},
        "variants": DEFAULT_VARIANTS,
        "extra": {"seed": seed, "epochs": epochs, "eval_samples": int(len(y_eval))},
    }
    paths["metadata"].write_text(json.dumps(metadata, indent=2) + "\n")
    return paths
