"""Core ML: build mlprogram packages, ship them as deterministic zips, and check them.

Core ML cannot run on Linux (``predict`` is macOS-only), so the server measures what
it honestly can: the package parses, reloads and passes MIL type inference, and how
far each compressed variant's weights are from the float32 program's weights. Output
fidelity and latency come later from device telemetry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np

from ._fidelity import relative_l2
from ._source import SIGNATURE_KEY, ModelSignature

INPUT_NAME = "input"  # only for check_package's single-shape form
PALETTE_BITS = {"coreml-palettized-6bit": 6, "coreml-palettized-4bit": 4}
# Which built package a derived variant starts from. Palettizing from fp16 is ~3x
# faster than from fp32 and ends in the same fp16 look-up tables.
BASE_VARIANT = {
    "coreml-int8": "coreml-fp32",
    "coreml-palettized-6bit": "coreml-fp16",
    "coreml-palettized-4bit": "coreml-fp16",
}
# coremltools stamps the conversion day into the package; it is dropped so that the
# same inputs give the same bytes (the registry records when a conversion ran).
_VOLATILE_METADATA = ("com.github.apple.coremltools.conversion_date",)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_MANIFEST_NAMESPACE = uuid.UUID("6d0de7a5-8d3f-4a36-9c59-3f1bd5c3e0a1")


def convert_coreml(
    signature: ModelSignature, variant: str, build_dir: Path, base_package: Path | None = None
) -> Path:
    """Build one Core ML variant as ``build_dir/<variant>.mlpackage`` and return its path."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    if variant in ("coreml-fp32", "coreml-fp16"):
        precision = ct.precision.FLOAT32 if variant == "coreml-fp32" else ct.precision.FLOAT16
        if signature.framework == "torch":
            from ._torch import convert_coreml as convert_torch_coreml

            mlmodel = convert_torch_coreml(Path(signature.saved_model_dir), signature, precision)
        else:
            mlmodel = _convert_saved_model(signature, precision)
    else:
        if base_package is None:
            raise ValueError(f"{variant} is built from {BASE_VARIANT[variant]}, which is missing")
        base = ct.models.MLModel(str(base_package), skip_model_load=True)
        if variant == "coreml-int8":
            config = cto.OptimizationConfig(
                global_config=cto.OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", granularity="per_channel"
                )
            )
            mlmodel = cto.linear_quantize_weights(base, config)
        elif variant in PALETTE_BITS:
            # One k-means worker: more than one hangs with the default fork start method.
            config = cto.OptimizationConfig(
                global_config=cto.OpPalettizerConfig(
                    mode="kmeans", nbits=PALETTE_BITS[variant], num_kmeans_workers=1
                )
            )
            mlmodel = cto.palettize_weights(base, config)
        else:
            raise ValueError(f"not a Core ML variant: {variant}")
    for key in _VOLATILE_METADATA:
        mlmodel.user_defined_metadata.pop(key, None)
    package = build_dir / f"{variant}.mlpackage"
    if package.exists():
        shutil.rmtree(package)
    build_dir.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(package))
    _normalise_package(package)
    return package


def _convert_saved_model(signature: ModelSignature, precision):
    """Convert through a tf.function with named batch-1 TensorSpecs, one per input.

    ``ct.convert`` rejects Sequential models and multi-signature SavedModels given
    directly; a single concrete function around the serving signature works for both. Its
    outputs are a list in the source's order, renamed after the source's outputs.
    """
    import coremltools as ct
    import tensorflow as tf

    from ._torch import coreml_input_dtype

    loaded = tf.saved_model.load(signature.saved_model_dir)
    serving = loaded.signatures[SIGNATURE_KEY]
    names = [t.name for t in signature.inputs]
    output_names = [t.name for t in signature.outputs]

    @tf.function
    def forward(*args):
        result = serving(**dict(zip(names, args)))
        return [result[name] for name in output_names]

    specs = [tf.TensorSpec((1, *t.shape), getattr(tf, t.dtype), name=t.name) for t in signature.inputs]
    concrete = forward.get_concrete_function(*specs)
    target = {"minimum_deployment_target": ct.target.iOS16} if any(
        t.dtype == "float16" for t in signature.inputs) else {}
    mlmodel = ct.convert(
        [concrete],
        source="tensorflow",
        convert_to="mlprogram",
        inputs=[ct.TensorType(name=t.name, shape=(1, *t.shape), dtype=coreml_input_dtype(t))
                for t in signature.inputs],
        compute_precision=precision,
        **target,
    )
    spec = mlmodel.get_spec()
    current = [out.name for out in spec.description.output]
    if len(current) != len(output_names):
        raise ValueError(f"the Core ML model has {len(current)} outputs, the source {len(output_names)}")
    if current != output_names:
        for old, new in zip(current, output_names):
            if old != new:
                ct.utils.rename_feature(spec, old, new)
        mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    return mlmodel


def _normalise_package(package: Path) -> None:
    """Make a saved package byte-for-byte reproducible.

    Two things vary between runs of the same conversion: Manifest.json gets random
    item identifiers, and protobuf writes map fields (metadata, op attributes) in an
    unspecified order. The identifiers only link entries inside the manifest, so ones
    derived from the item paths are as valid; the spec is rewritten with protobuf's
    deterministic serialization, which sorts map keys.
    """
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {
        old: str(uuid.uuid5(_MANIFEST_NAMESPACE, entry["path"]))
        for old, entry in manifest["itemInfoEntries"].items()
    }
    manifest["itemInfoEntries"] = {
        renamed[old]: entry for old, entry in manifest["itemInfoEntries"].items()
    }
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    root_entry = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    spec_path = package / "Data" / root_entry["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def zip_package(package: Path, zip_path: Path) -> Path:
    """Zip a .mlpackage directory reproducibly: sorted entries, fixed time and modes."""
    files = sorted(
        (f"{package.name}/{path.relative_to(package).as_posix()}", path)
        for path in package.rglob("*")
        if path.is_file()
    )
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(partial, "w") as archive:
        for arcname, path in files:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode bits below mean the same everywhere
            info.external_attr = 0o100644 << 16
            size = path.stat().st_size
            with path.open("rb") as src, archive.open(info, "w", force_zip64=size >= 1 << 31) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(zip_path)
    return zip_path


def _load_program(package: Path):
    """Reload a package from disk and rebuild its MIL program (runs type inference on every op)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"expected an mlProgram, found {spec.WhichOneof('Type')}")
    program = load_milproto(
        model_spec=spec,
        specification_version=spec.specificationVersion,
        file_weights_dir=mlmodel.weights_dir,
    )
    return spec, program


def weight_tensors(program) -> list[tuple[str, np.ndarray]]:
    """Every float weight tensor (rank >= 1) feeding a compute op, in program order.

    Compressed weights (constexpr_* ops) are decompressed with coremltools' own
    ``materialized_val_inference``. Tensors are keyed by consuming op type and
    parameter, not by name: the fp16 and compression passes rename constants, and
    the fp16 pass adds ``cast`` ops, which are skipped so that programs line up.
    """
    found: list[tuple[str, np.ndarray]] = []

    def constant(var):
        producer = getattr(var, "op", None)
        if producer is None:
            return None
        if producer.op_type == "const":
            value = var.val
        elif producer.op_type.startswith("constexpr_"):
            value = producer.materialized_val_inference()
        else:
            return None
        if isinstance(value, np.ndarray) and value.ndim >= 1 and np.issubdtype(value.dtype, np.floating):
            return value
        return None

    def visit(block):
        for op in block.operations:
            for inner in op.blocks:
                visit(inner)
            if op.op_type in ("const", "cast") or op.op_type.startswith("constexpr_"):
                continue
            for param in sorted(op.inputs):
                value = op.inputs[param]
                for index, var in enumerate(value if isinstance(value, (list, tuple)) else (value,)):
                    array = constant(var)
                    if array is not None:
                        found.append((f"{op.op_type}.{param}[{index}]", array))

    for name in sorted(program.functions):
        visit(program.functions[name])
    return found


def check_package(
    zip_path: Path, reference_weights: list[tuple[str, np.ndarray]] | None, inputs
) -> dict:
    """Validate the shipped zip and measure its weights against the float32 program.

    ``inputs`` are the source's TensorSpecs (or, as before, one input shape for an input
    named ``input``). Raises on anything that would stop a device from loading it: the
    zip does not extract, the package does not reload, it is not an mlprogram, its
    program fails type inference, or its inputs are not the source's names with batch-1
    shapes.
    """
    with tempfile.TemporaryDirectory(prefix="modeldrop-coreml-check-") as tmp:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(tmp)  # our own artifact, written just now by zip_package
        (package,) = list(Path(tmp).glob("*.mlpackage"))
        spec, program = _load_program(package)
        found = {feature.name: tuple(feature.type.multiArrayType.shape) for feature in spec.description.input}
        if isinstance(inputs, tuple) and all(isinstance(d, int) for d in inputs):
            expected = {INPUT_NAME: (1, *inputs)}
        else:
            expected = {t.name: (1, *t.shape) for t in inputs}
        if found != expected:
            raise ValueError(f"package inputs {found} differ from the expected {expected}")
        report = {"spec_valid": True, "reloaded": True, "spec_version": int(spec.specificationVersion)}
        report.update(_weight_error(weight_tensors(program), reference_weights))
    return report


def reference_weights(package: Path) -> list[tuple[str, np.ndarray]]:
    _, program = _load_program(package)
    return weight_tensors(program)


def _weight_error(candidate, reference) -> dict:
    unmeasured = {"weight_rel_error": None, "weight_rel_error_max": None, "weights_compared": 0, "weight_elements": 0}
    if reference is None:
        return {**unmeasured, "weight_note": "the float32 reference package is unavailable"}
    keys_c = [(key, array.shape) for key, array in candidate]
    keys_r = [(key, array.shape) for key, array in reference]
    if keys_c != keys_r:
        # Refuse to guess a pairing: a number from misaligned tensors would be invented.
        return {
            **unmeasured,
            "weight_note": (
                f"weights do not line up with the float32 program ({len(keys_c)} vs {len(keys_r)} tensors)"
            ),
        }
    return relative_l2([(c, r) for (_, c), (_, r) in zip(candidate, reference)])
