"""PyTorch uploads: load a ``.pt2`` or ``.pt`` and build TFLite and Core ML variants from it.

Both formats are reduced to one ``torch.export`` ExportedProgram with static shapes:

- ``.pt2`` is what ``torch.export.save`` writes; ``torch.export.load`` reads it back.
- ``.pt`` is a TorchScript archive (``torch.jit.save``). TorchScript records no input
  shapes, so the eval set's arrays (one per ``forward`` parameter, ``x`` for one) supply
  them; ``TS2EPConverter`` turns the module into an ExportedProgram for litert-torch, and
  coremltools converts the TorchScript module itself.

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


def _torch_dtype(dtype):
    import torch

    return getattr(torch, dtype)


def _dtype_name(dtype, where: str) -> str:
    from ._source import SUPPORTED_DTYPES

    name = str(dtype).removeprefix("torch.")
    if name not in SUPPORTED_DTYPES:
        raise ConversionError(f"{where} is {name}; supported dtypes are {', '.join(SUPPORTED_DTYPES)}")
    return name


def sample_args(inputs, batch: int = 1) -> tuple:
    """Zero tensors shaped and typed like the inputs, batch first."""
    import torch

    return tuple(torch.zeros((batch, *spec.shape), dtype=_torch_dtype(spec.dtype)) for spec in inputs)


def load_program(path: Path, inputs=None):
    """The upload as an ExportedProgram (and, for TorchScript, the scripted module).

    ``inputs`` (TensorSpecs) are needed for TorchScript, which records no shapes: without
    them a ``.pt`` returns ``(None, script)``.

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
    if inputs is None:
        return None, script
    from torch._export.converter import TS2EPConverter

    try:
        program = TS2EPConverter(script, sample_args(inputs)).convert()
    except Exception as exc:
        raise ConversionError(f"cannot convert the TorchScript module {path.name} to a torch.export "
                              f"program for inputs {_describe(inputs)}: {exc}") from exc
    return program, script


def _describe(inputs) -> str:
    return ", ".join(f"{t.name} {t.dtype} (1, {', '.join(map(str, t.shape))})" for t in inputs)


def script_inputs(script, arrays: dict | None, filename: str):
    """A TorchScript module's inputs: names from ``forward``'s parameters, shapes and
    dtypes from the eval set's arrays of those names (``x`` for a single input)."""
    from ._evalset import input_array_name
    from ._source import TensorSpec

    names = [argument.name for argument in script.forward.schema.arguments[1:]]
    if not arrays:
        raise ConversionError(
            f"{filename} is TorchScript, which does not record its input shapes: upload an eval set with one "
            f"array per input ({', '.join(repr(n) for n in names)}; 'x' for a single input) shaped (N, ...), "
            "or save the model with torch.export.save (.pt2)")
    specs = []
    for name in names:
        array = input_array_name(name, arrays, len(names) == 1)
        if array is None:
            raise ConversionError(f"the eval set has no array for input {name!r} of the TorchScript module "
                                  f"{filename} (found: {', '.join(arrays) or 'none'})")
        shape, dtype = arrays[array]
        dtype = {"float64": "float32"}.get(dtype, dtype)
        specs.append(TensorSpec(name, _dtype_name(dtype, f"eval set array {array!r}"), tuple(shape)))
    return tuple(specs)


def _flatten(result) -> list:
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]


def _output_names(count: int, declared: list[str] | None, keys: list[str] | None) -> list[str]:
    """Outputs are named by forward's dict keys, else by the metadata's declared output list
    (in order, when it has as many), else ``output_<i>``."""
    if keys and len(keys) == count:
        return [str(k) for k in keys]
    if declared and len(declared) == count:
        return list(declared)
    return [f"output_{i}" for i in range(count)]


def describe_script_outputs(script, inputs, filename: str, declared: list[str] | None):
    """One run on zeros shows what the TorchScript module returns."""
    import torch

    from ._source import TensorSpec

    try:
        with torch.no_grad():
            result = script(*sample_args(inputs))
    except Exception as exc:
        raise ConversionError(f"the TorchScript module {filename} does not run on inputs {_describe(inputs)} "
                              f"(from the eval set): {exc}") from exc
    values = _flatten(result)
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise ConversionError(f"{filename} must return a tensor, a tuple of tensors or a dict of tensors")
    names = _output_names(len(values), declared, list(result) if isinstance(result, dict) else None)
    return tuple(TensorSpec(name, _dtype_name(v.dtype, f"model output {name!r}"), tuple(int(d) for d in v.shape[1:]))
                 for name, v in zip(names, values))


def describe_program(program, filename: str, declared: list[str] | None = None):
    """(inputs, outputs) of a program, as TensorSpecs without the batch dimension.

    Raises:
        ConversionError: a dtype outside the supported ones, a dynamic dimension (named by
            input and index) or a batch other than 1.
    """
    import torch

    from ._source import TensorSpec

    signature = program.graph_signature
    input_names = list(signature.user_inputs)
    if not input_names or not signature.user_outputs:
        raise ConversionError(f"{filename} has no tensor inputs or outputs")
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = []
    for name in input_names:
        value = nodes[name].meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"model input {name!r} of {filename} is not a tensor")
        dtype = _dtype_name(value.dtype, f"model input {name!r}")
        shape = _static_shape(value, name, "input")
        if len(shape) < 2:
            raise ConversionError(f"model input {name!r} has shape {shape}; expected a batch dimension "
                                  "and at least one more")
        if shape[0] != 1:
            raise ConversionError(f"model input {name!r} has a fixed batch of {shape[0]} (dimension 0); "
                                  "export it with batch 1")
        inputs.append(TensorSpec(name, dtype, shape[1:]))
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    values = [arg.meta.get("val") if hasattr(arg, "meta") else None for arg in output_node.args[0]]
    values = values[len(values) - len(signature.user_outputs):]  # mutated buffers come first
    out_spec = getattr(program.call_spec, "out_spec", None)
    keys = list(out_spec.context) if out_spec is not None and out_spec.type is dict else None
    names = _output_names(len(values), declared, keys)
    outputs = []
    for name, value in zip(names, values):
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"model output {name!r} of {filename} is not a tensor")
        shape = _static_shape(value, name, "output")
        outputs.append(TensorSpec(name, _dtype_name(value.dtype, f"model output {name!r}"), shape[1:]))
    return tuple(inputs), tuple(outputs)


def vocabulary(program) -> int | None:
    """The smallest ``aten.embedding`` table in the program (valid token ids are below it)."""
    sizes = []
    for node in program.graph.nodes:
        if node.op == "call_function" and "embedding" in str(node.target) and node.args:
            weight = getattr(node.args[0], "meta", {}).get("val")
            if weight is not None and len(weight.shape) == 2 and isinstance(weight.shape[0], int):
                sizes.append(int(weight.shape[0]))
    return min(sizes) if sizes else None


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

    def __init__(self, program, script, signature):
        self._module = script if script is not None else program.module()
        self._inputs = signature.inputs
        self._outputs = [t.name for t in signature.outputs]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        count = len(next(iter(batch.values())))
        collected: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        with torch.no_grad():
            for index in range(count):
                args = [torch.from_numpy(np.ascontiguousarray(batch[t.name][index:index + 1], dtype=t.dtype))
                        for t in self._inputs]
                values = _flatten(self._module(*args))
                for name, value in zip(self._outputs, values):
                    collected[name].append(value.detach().cpu().numpy())
        return {name: np.concatenate(parts, axis=0) for name, parts in collected.items()}


def _named_module(program, signature):
    """The program as a module taking keyword inputs and returning a dict of outputs:
    litert-torch names a TFLite signature's tensors after those keys (else args_0, output_0)."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self, inner, input_names, output_names):
            super().__init__()
            self.inner = inner
            self.input_names = input_names
            self.output_names = output_names

        def forward(self, **kwargs):
            values = _flatten(self.inner(*[kwargs[name] for name in self.input_names]))
            return dict(zip(self.output_names, values))

    return Named(program.module(), [t.name for t in signature.inputs], [t.name for t in signature.outputs])


# -- TFLite ---------------------------------------------------------------------------------


def convert_tflite(source_file: Path, signature, variant: str, out_path: Path,
                   build_dir: Path, calibration_path: Path | None = None) -> Path:
    """litert-torch to float32, then ai-edge-quantizer for the quantized variants."""
    import litert_torch

    from ._tflite import load_calibration

    program, _ = load_program(source_file, signature.inputs)
    samples = dict(zip([t.name for t in signature.inputs], sample_args(signature.inputs)))
    build_dir.mkdir(parents=True, exist_ok=True)
    float_path = build_dir / f"{variant}.float32.tflite"
    litert_torch.convert(_named_module(program, signature), sample_kwargs=samples).export(str(float_path))
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
        arrays = load_calibration(calibration_path)
        count = len(next(iter(arrays.values())))
        calibration = qt.calibrate(
            {TFLITE_SIGNATURE: [{name: _calibration_value(x[i:i + 1]) for name, x in arrays.items()}
                                for i in range(count)]}, num_threads=1)
    else:
        raise ValueError(f"not a TFLite variant: {variant}")
    qt.quantize(calibration, enable_progress_report=False).export_model(str(out_path), overwrite=True)
    float_path.unlink(missing_ok=True)
    return out_path


def _calibration_value(x: np.ndarray) -> np.ndarray:
    # litert-torch narrows int64 inputs to int32 in the flatbuffer; feed what it takes.
    return x.astype(np.int32) if x.dtype == np.int64 else x


# -- Core ML --------------------------------------------------------------------------------


def coreml_input_dtype(spec):
    """The numpy dtype a Core ML multi-array input takes for a source input; int64 is
    narrowed to int32 (Core ML has no int64 arrays)."""
    mapping = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int32,
               "bool": np.bool_}
    if spec.dtype not in mapping:
        raise ValueError(f"input {spec.name!r} is {spec.dtype}, which Core ML multi-arrays cannot take "
                         "(a uint8 tensor needs an image input)")
    return mapping[spec.dtype]


def convert_coreml(source_file: Path, signature, precision):
    """An mlprogram whose features carry the source's input and output names.

    The ExportedProgram goes through ``run_decompositions({})`` (coremltools refuses the
    training dialect); TorchScript is converted as the scripted module with its shapes.
    """
    import coremltools as ct

    program, script = load_program(source_file, signature.inputs)
    inputs = [ct.TensorType(name=t.name, shape=(1, *t.shape), dtype=coreml_input_dtype(t))
              for t in signature.inputs]
    outputs = [ct.TensorType(name=t.name) for t in signature.outputs]
    source = script if script is not None else program.run_decompositions({})
    target = {"minimum_deployment_target": ct.target.iOS16} if any(
        t.dtype == "float16" for t in signature.inputs) else {}
    return ct.convert(source, source="pytorch", convert_to="mlprogram", inputs=inputs, outputs=outputs,
                      compute_precision=precision, **target)
