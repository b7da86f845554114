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
        calibration = np.load(calibration_path)

        def representative_dataset():
            for sample in calibration:
                yield [sample[None, ...]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    else:
        raise ValueError(f"not a TFLite variant: {variant}")
    flatbuffer = converter.convert()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(flatbuffer)
    return out_path


def _interpreter(model_path: Path, num_threads: int | None):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(model_path), num_threads=num_threads)


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float inputs to the tensor's dtype using its (scale, zero_point); floats pass through."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """Integer outputs back to float with the tensor's (scale, zero_point)."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return y.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def run_tflite(model_path: Path, x: np.ndarray) -> np.ndarray:
    """Run the interpreter over every sample and return float outputs (dequantized)."""
    interpreter = _interpreter(model_path, num_threads=None)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    # A dynamic batch dimension lets us run chunks; a fixed one means one sample a time.
    dynamic_batch = int(inp["shape_signature"][0]) == -1
    batch = eval_batch_size(tuple(x.shape[1:])) if dynamic_batch else int(inp["shape"][0])
    if not dynamic_batch:
        interpreter.allocate_tensors()
    outputs = []
    current = None
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if dynamic_batch and current != len(chunk):
            interpreter.resize_tensor_input(inp["index"], [len(chunk), *map(int, inp["shape"][1:])])
            interpreter.allocate_tensors()
            current = len(chunk)
        interpreter.set_tensor(inp["index"], quantize_input(chunk, inp))
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_tensor(out["index"]).copy(), out))
    return np.concatenate(outputs, axis=0)


def time_tflite(model_path: Path, sample: np.ndarray, runs: int) -> list[float]:
    """Wall-clock milliseconds of ``runs`` single-input invocations, one thread, after warm-up.

    Uses the interpreter's default CPU delegate (XNNPACK for float ops), as a device would.
    """
    interpreter = _interpreter(model_path, num_threads=1)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], [1, *map(int, inp["shape"][1:])])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], quantize_input(sample[None, ...], inp))
    for _ in range(LATENCY_WARMUP_RUNS):
        interpreter.invoke()
    timings = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        timings.append((time.perf_counter_ns() - start) / 1e6)
    return timings
