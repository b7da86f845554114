"""PyTorch uploads: load a ``.pt2`` or ``.pt`` and build TFLite and Core ML variants from it.

Both formats are reduced to one ``torch.export`` ExportedProgram with static shapes:

- ``.pt2`` is what ``torch.export.save`` writes; ``torch.export.load`` reads it back.
- ``.pt`` is a TorchScript archive (``torch.jit.save``). TorchScript records no input
  shape, so the eval set's ``x`` supplies it; ``TS2EPConverter`` turns the module into an
  ExportedProgram for litert-torch, and coremltools converts the TorchScript module itself.

TFLite comes from litert-torch (float32), then ai-edge-quantizer for fp16 weights
(float casting), dynamic int8 and full-integer int8 (static int8 weights and
activations, calibrated on the eval set). Core ML comes from coremltools
(``run_decompositions({})`` first for an ExportedProgram). A PyTorch file is code (its
archive holds pickles): this module runs only inside the sandboxed converter.

The calls and their limits were measured with torch 2.13, litert-torch 0.10 and
coremltools 9 (docs/conversion.md, "PyTorch uploads"): litert-torch needs static
shapes, so a dynamic dimension is refused at load with its index; int64 inputs become
int32 in Core ML.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .catalog import ConversionError

TORCH_SUFFIXES = {".pt2": "torch.export ExportedProgram (torch.export.save)",
                  ".pt": "TorchScript module (torch.jit.save)"}
TFLITE_SIGNATURE = "serving_default"  # the one signature litert-torch writes


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def load_program(path: Path, input_shape: tuple[int, ...] | None = None):
    """The upload as an ExportedProgram (and, for TorchScript, the scripted module).

    Returns:
        (exported_program, script_module_or_None)

    Raises:
        ConversionError: the file is not what its extension says, or does not load.
    """
    import torch

    suffix = path.suffix.lower()
    what = TORCH_SUFFIXES[suffix]
    if not _is_zip(path):
        # Both formats are zip archives; anything else (a bare pickle from torch.save of a
        # whole module, a renamed file) is refused before torch reads a byte of it.
        raise ConversionError(f"{path.name} is not a {what}: it is not a zip archive")
    if suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises many types; its message is what matters
            raise ConversionError(f"{path.name} is not a {what}: {exc}") from exc
        return program, None
    try:
        script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConversionError(f"{path.name} is not a {what}: {exc}") from exc
    script.eval()
    if input_shape is None:
        raise ConversionError(
            f"{path.name} is TorchScript, which does not record its input shape: upload an eval set "
            "whose 'x' has the model's input shape (N, ...), or save the model with torch.export.save (.pt2)")
    from torch._export.converter import TS2EPConverter

    sample = torch.zeros((1, *input_shape), dtype=torch.float32)
    try:
        program = TS2EPConverter(script, (sample,)).convert()
    except Exception as exc:
        raise ConversionError(f"cannot convert the TorchScript module {path.name} to a torch.export "
                              f"program for input shape (1, {', '.join(map(str, input_shape))}): {exc}") from exc
    return program, script


def describe_script(script, input_shape: tuple[int, ...],
                    filename: str) -> tuple[str, tuple[int, ...], str, tuple[int, ...]]:
    """The same for TorchScript, whose shape comes from the eval set: one run on zeros
    shows that it takes that input and returns one tensor.

    (``TS2EPConverter`` marks dimensions dynamic, so the program's own shapes say nothing.)
    """
    import torch

    try:
        with torch.no_grad():
            result = script(torch.zeros((1, *input_shape), dtype=torch.float32))
    except Exception as exc:
        raise ConversionError(f"the TorchScript module {filename} does not run on an input of shape "
                              f"(1, {', '.join(map(str, input_shape))}) (from the eval set): {exc}") from exc
    if isinstance(result, (tuple, list)) and len(result) == 1:
        (result,) = result
    if not isinstance(result, torch.Tensor):
        count = len(result) if isinstance(result, (tuple, list, dict)) else "no tensor"
        raise ConversionError(f"only single-input, single-output models are supported; {filename} returns {count}")
    return "input", tuple(input_shape), "output", tuple(int(d) for d in result.shape[1:])


def describe_program(program, filename: str) -> tuple[str, tuple[int, ...], str, tuple[int, ...]]:
    """(input name, input shape without batch, output name, output shape) of a program.

    Raises:
        ConversionError: not exactly one input and one output, a non-float32 input, a
            dynamic dimension (named by index) or a batch other than 1.
    """
    import torch

    signature = program.graph_signature
    inputs = list(signature.user_inputs)
    outputs = list(signature.user_outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConversionError(
            f"only single-input, single-output models are supported; {filename} has "
            f"{len(inputs)} inputs and {len(outputs)} outputs")
    nodes = {node.name: node for node in program.graph.nodes}
    (input_name,), (output_name,) = inputs, outputs
    value = nodes[input_name].meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise ConversionError(f"model input {input_name!r} of {filename} is not a tensor")
    if value.dtype != torch.float32:
        raise ConversionError(f"model input {input_name!r} is {str(value.dtype).removeprefix('torch.')}; "
                              "only float32 is supported")
    shape = _static_shape(value, input_name, "input")
    if len(shape) < 2:
        raise ConversionError(f"model input {input_name!r} has shape {shape}; expected a batch dimension "
                              "and at least one more")
    if shape[0] != 1:
        raise ConversionError(f"model input {input_name!r} has a fixed batch of {shape[0]} (dimension 0); "
                              "export it with batch 1")
    out_value = nodes[output_name].meta.get("val") if output_name in nodes else None
    out_shape = _static_shape(out_value, output_name, "output") if isinstance(out_value, torch.Tensor) else ()
    return input_name, shape[1:], output_name, out_shape[1:]


def _static_shape(value, name: str, role: str) -> tuple[int, ...]:
    dims = []
    for index, dim in enumerate(value.shape):
        if not isinstance(dim, int):
            raise ConversionError(
                f"model {role} {name!r} has a dynamic dimension {index} ({dim}); litert-torch converts "
                "static shapes only: export the model with a fixed size for that dimension")
        dims.append(int(dim))
    return tuple(dims)


class TorchPredictor:
    """Reference outputs from the uploaded model (the TorchScript module itself, else the
    exported program), one batch-1 sample at a time: an exported program is specialised to
    the batch it was exported with."""

    def __init__(self, program, script=None):
        self._module = script if script is not None else program.module()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        with torch.no_grad():
            for sample in batch:
                result = self._module(torch.from_numpy(np.ascontiguousarray(sample[None, ...], dtype=np.float32)))
                if isinstance(result, (tuple, list)):
                    (result,) = result
                outputs.append(result.detach().cpu().numpy().astype(np.float32))
        return np.concatenate(outputs, axis=0)


# -- TFLite ---------------------------------------------------------------------------------


def convert_tflite(source_file: Path, input_shape: tuple[int, ...], variant: str, out_path: Path,
                   build_dir: Path, calibration_path: Path | None = None) -> Path:
    """litert-torch to float32, then ai-edge-quantizer for the quantized variants."""
    import litert_torch
    import torch

    program, _ = load_program(source_file, input_shape)
    sample = torch.zeros((1, *input_shape), dtype=torch.float32)
    build_dir.mkdir(parents=True, exist_ok=True)
    float_path = build_dir / f"{variant}.float32.tflite"
    litert_torch.convert(program.module(), (sample,)).export(str(float_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if variant == "tflite-fp32":
        float_path.replace(out_path)
        return out_path
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(str(float_path))
    calibration = None
    if variant == "tflite-fp16":
        qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                  num_bits=16, algorithm_key=recipe.AlgorithmName.FLOAT_CASTING)
    elif variant == "tflite-int8-dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif variant == "tflite-int8-full":
        if calibration_path is None:
            raise ValueError("tflite-int8-full needs calibration inputs")
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        input_key = _tflite_input_key(float_path)
        samples = np.load(calibration_path)
        calibration = qt.calibrate(
            {TFLITE_SIGNATURE: [{input_key: s[None, ...].astype(np.float32)} for s in samples]}, num_threads=1)
    else:
        raise ValueError(f"not a TFLite variant: {variant}")
    qt.quantize(calibration, enable_progress_report=False).export_model(str(out_path), overwrite=True)
    float_path.unlink(missing_ok=True)
    return out_path


def _tflite_input_key(model_path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(model_path)).get_signature_list()
    (key,) = signatures[TFLITE_SIGNATURE]["inputs"]
    return key


# -- Core ML --------------------------------------------------------------------------------


def convert_coreml(source_file: Path, input_shape: tuple[int, ...], precision, input_name: str,
                   output_name: str):
    """An mlprogram with its feature names set to ``input_name``/``output_name``.

    The ExportedProgram goes through ``run_decompositions({})`` (coremltools refuses the
    training dialect); TorchScript is converted as the scripted module with its shape.
    """
    import coremltools as ct

    program, script = load_program(source_file, input_shape)
    shape = (1, *input_shape)
    if script is not None:
        mlmodel = ct.convert(script, source="pytorch", convert_to="mlprogram",
                             inputs=[ct.TensorType(name=input_name, shape=shape, dtype=np.float32)],
                             outputs=[ct.TensorType(name=output_name)], compute_precision=precision)
    else:
        mlmodel = ct.convert(program.run_decompositions({}), source="pytorch", convert_to="mlprogram",
                             outputs=[ct.TensorType(name=output_name)], compute_precision=precision)
    spec = mlmodel.get_spec()
    (current,) = [feature.name for feature in spec.description.input]
    if current != input_name:
        ct.utils.rename_feature(spec, current, input_name)
        mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    return mlmodel
