"""Small real PyTorch models for tests, trained in seconds on scikit-learn's bundled digits.

The same data as ``makers_keras`` (channels first: [N, 1, 8, 8]), saved the two ways a
PyTorch user ships a model: ``torch.export.save`` (.pt2) and ``torch.jit.save`` (.pt).
torch is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.makers_keras import DIGITS_SEED, digits_data, make_eval_npz

TORCH_EPOCHS = 30


@dataclass(frozen=True)
class TorchDigits:
    pt2_path: Path
    pt_path: Path
    eval_npz: Path
    x_eval: np.ndarray  # [N, 1, 8, 8] float32
    y_eval: np.ndarray


def digits_nchw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train, x_eval, y_eval = digits_data()
    return (np.ascontiguousarray(x_train.transpose(0, 3, 1, 2)), y_train,
            np.ascontiguousarray(x_eval.transpose(0, 3, 1, 2)), y_eval)


def digits_module():
    """A small CNN (about 10k parameters) ending in softmax, as a Keras user's would."""
    import torch
    from torch import nn

    torch.manual_seed(DIGITS_SEED)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=-1),
    )


def train_digits_module():
    """Full-batch Adam for a few dozen steps: ~95% on the held-out digits, in about a second."""
    import torch

    x_train, y_train, _, _ = digits_nchw()
    model = digits_module()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(TORCH_EPOCHS):
        optimiser.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(x) + 1e-9), y)
        loss.backward()
        optimiser.step()
    return model.eval()


def save_torch_formats(model, directory: Path, input_shape=(1, 1, 8, 8), stem: str = "digits") -> tuple[Path, Path]:
    """``torch.export.save`` to .pt2 and ``torch.jit.save`` of a trace to .pt."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    sample = torch.zeros(input_shape)
    pt2_path = directory / f"{stem}.pt2"
    torch.export.save(torch.export.export(model, (sample,)), str(pt2_path))
    pt_path = directory / f"{stem}.pt"
    torch.jit.save(torch.jit.trace(model, (sample,)), str(pt_path))
    return pt2_path, pt_path


def make_torch_digits(tmp_path: Path) -> tuple[TorchDigits, object]:
    model = train_digits_module()
    pt2_path, pt_path = save_torch_formats(model, tmp_path)
    _, _, x_eval, y_eval = digits_nchw()
    eval_npz = make_eval_npz(tmp_path / "digits_nchw_eval.npz", x_eval, y_eval)
    return TorchDigits(pt2_path, pt_path, eval_npz, x_eval, y_eval), model


def dynamic_batch_pt2(path: Path) -> Path:
    """A program exported with a dynamic batch dimension (litert-torch cannot take it)."""
    import torch

    model = digits_module().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


class _Payload:
    """Unpickling this runs ``exec(code)``: what a hostile ``torch.save`` archive carries."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def hostile_pickle_archive(path: Path, code: str, *, archive_name: str = "archive") -> Path:
    """A zip laid out like ``torch.save``/``torch.jit.save`` output whose pickles run ``code``.

    Every pickle a torch loader might read (``data.pkl``, ``constants.pkl``) is the payload,
    so a loader that unpickles with arbitrary globals runs it.
    """
    payload = pickle.dumps(_Payload(code), protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{archive_name}/data.pkl", payload)
        archive.writestr(f"{archive_name}/constants.pkl", payload)
        archive.writestr(f"{archive_name}/version", "3\n")
        archive.writestr(f"{archive_name}/byteorder", "little")
    return path
