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


# -- model families (the same as makers_keras's, channels first, exported with batch 1) ----


def _torch_family_module(family: str):
    import torch
    from torch import nn

    from tests.makers_keras import DETECTOR_BOXES, DETECTOR_CLASSES, FAMILY_SEED, LANDMARKS, VOCAB

    torch.manual_seed(FAMILY_SEED)

    def conv_features(channels_in, filters=8):
        return nn.Sequential(nn.Conv2d(channels_in, filters, 3, stride=2, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class ImageClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.head = conv_features(3), nn.Linear(8, 5)

        def forward(self, image):
            return torch.softmax(self.head(self.features(image)), dim=-1)

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = conv_features(3, 16)
            self.hidden = nn.Linear(16, 32)
            self.boxes = nn.Linear(32, DETECTOR_BOXES * 4)
            self.scores = nn.Linear(32, DETECTOR_BOXES * DETECTOR_CLASSES)

        def forward(self, image):
            h = torch.relu(self.hidden(self.features(image)))
            boxes = torch.sigmoid(self.boxes(h)).reshape(-1, DETECTOR_BOXES, 4)
            scores = torch.softmax(self.scores(h).reshape(-1, DETECTOR_BOXES, DETECTOR_CLASSES), dim=-1)
            return {"boxes": boxes, "scores": scores}  # named outputs: forward returns a dict

    class Landmarks(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.head = conv_features(1), nn.Linear(8, LANDMARKS * 2)

        def forward(self, face):
            return self.head(self.features(face))

    class Accelerometer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 8, 5, stride=2)
            self.head = nn.Linear(8, 4)

        def forward(self, window):
            return torch.softmax(self.head(torch.relu(self.conv(window)).mean(dim=-1)), dim=-1)

    class KeywordSpotting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, stride=2)
            self.depthwise = nn.Conv2d(8, 8, 3, stride=2, groups=8)
            self.head = nn.Linear(8, 6)

        def forward(self, spectrogram):
            x = torch.relu(self.depthwise(torch.relu(self.conv(spectrogram))))
            return torch.softmax(self.head(x.mean(dim=(2, 3))), dim=-1)

    class TextClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, 16)
            self.hidden, self.head = nn.Linear(16, 16), nn.Linear(16, 2)

        def forward(self, tokens):
            x = self.embedding(tokens).mean(dim=1)
            return torch.softmax(self.head(torch.relu(self.hidden(x))), dim=-1)

    class TwoInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.head = conv_features(3), nn.Linear(8 + 4, 3)

        def forward(self, image, features):
            return torch.softmax(self.head(torch.cat([self.features(image), features], dim=1)), dim=-1)

    classes = {"image_classifier": ImageClassifier, "detector": Detector, "landmarks": Landmarks,
               "accelerometer": Accelerometer, "keyword_spotting": KeywordSpotting,
               "text_classifier": TextClassifier, "two_input": TwoInput}
    return classes[family]().eval()


class TorchFamily:
    """Same fields as makers_keras.FamilyModel; reference outputs from the torch module."""

    def __init__(self, family, source, eval_npz, inputs, outputs, tasks, metadata, model):
        self.family, self.source, self.eval_npz = family, source, eval_npz
        self.inputs, self.outputs, self.tasks, self.metadata, self.model = inputs, outputs, tasks, metadata, model

    def reference(self) -> dict:
        import torch

        collected = {name: [] for name in self.outputs}
        with torch.no_grad():
            for i in range(len(next(iter(self.inputs.values())))):
                result = self.model(*[torch.from_numpy(a[i:i + 1]) for a in self.inputs.values()])
                values = list(result.values()) if isinstance(result, dict) else (
                    list(result) if isinstance(result, (tuple, list)) else [result])
                for name, value in zip(self.outputs, values):
                    collected[name].append(value.numpy())
        return {name: np.concatenate(parts) for name, parts in collected.items()}


def make_torch_family(family: str, directory: Path, *, suffix: str = ".pt2", labels: bool = True) -> TorchFamily:
    """Build, save (``.pt2`` with torch.export.save, or ``.pt`` traced TorchScript) and write
    an eval set with one array per input (channels first) and labels as makers_keras does."""
    import torch

    from tests.makers_keras import FAMILY_OUTPUTS, family_eval_inputs, family_labels, family_metadata

    directory.mkdir(parents=True, exist_ok=True)
    model = _torch_family_module(family)
    inputs = family_eval_inputs(family, channels_first=True)
    sample = tuple(torch.from_numpy(a[:1]) for a in inputs.values())
    source = directory / f"{family}{suffix}"
    if suffix == ".pt2":
        torch.export.save(torch.export.export(model, sample), str(source))
    else:
        torch.jit.save(torch.jit.trace(model, sample), str(source))
    outputs = tuple(FAMILY_OUTPUTS[family])
    tasks = dict(FAMILY_OUTPUTS[family])
    probe = TorchFamily(family, source, None, inputs, outputs, tasks, {}, model)
    reference = probe.reference()
    arrays = dict(inputs)
    if labels:
        arrays.update(family_labels(reference, tasks))
    eval_npz = directory / f"{family}_eval.npz"
    np.savez(eval_npz, **arrays)
    metadata = family_metadata(inputs, reference, tasks, batch=1)
    return TorchFamily(family, source, eval_npz, inputs, outputs, tasks, metadata, model)
