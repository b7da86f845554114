"""TFLite: build the four variants from the exported SavedModel, and run them.

Conversion needs TensorFlow (worker processes only). Running uses ai_edge_litert's
Interpreter, the same runtime a device-like client uses, so fidelity and latency are
measured on the artifact that ships rather than on TensorFlow's deprecated copy.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ._evalset import eval_batch_size
from ._source import SIGNATURE_KEY, ModelSignature

LATENCY_WARMUP_RUNS = 10


def convert_tflite(
    signature: ModelSignature,
    variant: str,
    out_path: Path,
    calibration_path: Path | None = None,
) -> Path:
    """Convert the SavedModel's serving signature into one TFLite variant.

    ``from_saved_model`` is used rather than ``from_keras_model`` or concrete functions:
    it is the faster path here, and the only one that handles full-integer quantization
    (``from_concrete_functions`` fails on READ_VARIABLE ops).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        signature.saved_model_dir, signature_keys=[SIGNATURE_KEY]
    )
    if variant == "tflite-fp32":
        pass
    elif variant == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "tflite-int8-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "tflite-int8-full":
        if calibration_path is None:
            raise ValueError("tflite-int8-full needs calibration inputs")
        calibration = load_calibration(calibration_path)
        count = len(next(iter(calibration.values())))

        def representative_dataset():
            # One dict per sample, keyed by input name: several inputs need no order.
            for index in range(count):
                yield {name: x[index:index + 1] for name, x in calibration.items()}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Float inputs and outputs become int8; integer inputs (token ids) stay as they are.
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    else:
        raise ValueError(f"not a TFLite variant: {variant}")
    flatbuffer = converter.convert()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(flatbuffer)
    return out_path


def load_calibration(path: Path) -> dict[str, np.ndarray]:
    """The calibration inputs the parent saved (``np.savez``, one array per input name)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _interpreter(model_path: Path, num_threads: int | None):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(model_path), num_threads=num_threads)


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Inputs to the tensor's dtype: a quantized tensor (scale > 0) takes floats through its
    (scale, zero_point); anything else (floats, token ids) is a plain cast."""
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(dtype, np.integer) or not scale:
        return np.asarray(x).astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """Quantized outputs back to float with the tensor's (scale, zero_point); others as they are."""
    scale, zero_point = detail["quantization"]
    if not np.issubdtype(detail["dtype"], np.integer) or not scale:
        return y
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _tensors(interpreter, expected_inputs, expected_outputs, pair_single: bool = False):  # outputs None: not checked
    """(input details, output details), each {source name: detail}, matched by name.

    Names come from the model's one signature (what the converters write, named after the
    source's tensors); a model without a signature and a single input/output pairs by
    position. With ``pair_single`` (an engineer's own attached file, whose converter named
    its tensors: ``output_0``), a side with one tensor on both models pairs by position
    whatever the names. Anything else is refused rather than guessed.
    """
    by_index_in = {int(d["index"]): d for d in interpreter.get_input_details()}
    by_index_out = {int(d["index"]): d for d in interpreter.get_output_details()}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        inputs = {name: by_index_in[int(d["index"])] for name, d in runner.get_input_details().items()}
        outputs = {name: by_index_out[int(d["index"])] for name, d in runner.get_output_details().items()}
    elif len(by_index_in) == len(expected_inputs) == 1 and (
            expected_outputs is None or len(by_index_out) == len(expected_outputs) == 1):
        inputs = {expected_inputs[0]: next(iter(by_index_in.values()))}
        outputs = {(expected_outputs or ["output"])[0]: next(iter(by_index_out.values()))}
    else:
        raise ValueError("the TFLite model has no single signature to match its tensors by name")
    if pair_single and len(inputs) == len(expected_inputs) == 1:
        inputs = {expected_inputs[0]: next(iter(inputs.values()))}
    if pair_single and expected_outputs is not None and len(outputs) == len(expected_outputs) == 1:
        outputs = {expected_outputs[0]: next(iter(outputs.values()))}
    if expected_outputs is None:
        expected_outputs = list(outputs)
    if sorted(inputs) != sorted(expected_inputs) or sorted(outputs) != sorted(expected_outputs):
        raise ValueError(f"the TFLite model's tensors (inputs {sorted(inputs)}, outputs {sorted(outputs)}) are not "
                         f"the source's (inputs {sorted(expected_inputs)}, outputs {sorted(expected_outputs)})")
    return inputs, outputs


def run_tflite(model_path: Path, inputs: dict[str, np.ndarray],
               output_names: list[str] | None = None, *, pair_single: bool = False) -> dict[str, np.ndarray]:
    """Run the interpreter over every sample; outputs by name (quantized ones dequantized).

    ``inputs`` maps the source's input names to arrays (batch first); ``output_names``
    are the source's outputs (default: whatever the model has); ``pair_single`` as for
    ``_tensors``.
    """
    interpreter = _interpreter(model_path, num_threads=None)
    ins, outs = _tensors(interpreter, list(inputs), list(output_names) if output_names is not None else None,
                         pair_single)
    output_names = list(output_names) if output_names is not None else list(outs)
    # Dynamic batch dimensions let us run chunks; fixed ones mean their batch a time.
    dynamic_batch = all(int(d["shape_signature"][0]) == -1 for d in ins.values())
    sample_bytes = sum(x[0].nbytes for x in inputs.values())
    batches = {int(d["shape"][0]) for d in ins.values()}
    batch = eval_batch_size(sample_bytes) if dynamic_batch else min(batches)
    count = len(next(iter(inputs.values())))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    current = None
    if not dynamic_batch:
        interpreter.allocate_tensors()
    for start in range(0, count, batch):
        chunk = {name: x[start:start + batch] for name, x in inputs.items()}
        size = len(next(iter(chunk.values())))
        if dynamic_batch and current != size:
            for detail in ins.values():
                interpreter.resize_tensor_input(detail["index"], [size, *map(int, detail["shape"][1:])])
            interpreter.allocate_tensors()
            current = size
        for name, detail in ins.items():
            interpreter.set_tensor(detail["index"], quantize_input(chunk[name], detail))
        interpreter.invoke()
        for name in output_names:
            detail = outs[name]
            collected[name].append(dequantize_output(interpreter.get_tensor(detail["index"]).copy(), detail))
    return {name: np.concatenate(parts, axis=0) for name, parts in collected.items()}


def time_tflite(model_path: Path, sample: dict[str, np.ndarray], runs: int, *,
                pair_single: bool = False) -> list[float]:
    """Wall-clock milliseconds of ``runs`` single-sample invocations, one thread, after warm-up.

    ``sample`` maps input names to batch-1 arrays. Uses the interpreter's default CPU
    delegate (XNNPACK for float ops), as a device would.
    """
    interpreter = _interpreter(model_path, num_threads=1)
    ins, _ = _tensors(interpreter, list(sample), None, pair_single)
    for detail in ins.values():
        interpreter.resize_tensor_input(detail["index"], [1, *map(int, detail["shape"][1:])])
    interpreter.allocate_tensors()
    for name, detail in ins.items():
        interpreter.set_tensor(detail["index"], quantize_input(sample[name][:1], detail))
    for _ in range(LATENCY_WARMUP_RUNS):
        interpreter.invoke()
    timings = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        timings.append((time.perf_counter_ns() - start) / 1e6)
    return timings
