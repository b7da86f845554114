"""The op check on uploaded SavedModels, against real hostile models and real exports.

The hostile models are first shown to be real (loaded unsandboxed, here or in a child
process, they write the marker, leak the secret, spin or ask for 20 GiB), then shown to
be refused by ``check_saved_model`` naming the op. Normal Keras and TF exports, MobileNetV2
included, must pass; the loop and the allocation must pass too, because they do no I/O:
stopping them is the sandbox's job, and these tests pin that boundary.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from registry.convert import ConversionError, _opcheck
from registry.convert._opcheck import UnsafeModelError, check_saved_model
from tests import makers_hostile
from tests.makers_keras import zip_directory

SECRET = "s3cr3t-token-7f1c"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def _saved_model(zip_path: Path) -> Path:
    return makers_hostile.unzip(zip_path, zip_path.with_suffix(""))


def _serve(saved_model_dir: Path, x=None):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    batch = tf.constant(np.ones((2, 8), np.float32) if x is None else x)
    return loaded.signatures["serving_default"](x=batch)[makers_hostile.OUTPUT_KEY].numpy()


def _refusal(saved_model_dir: Path) -> str:
    with pytest.raises(UnsafeModelError) as info:
        check_saved_model(saved_model_dir)
    assert info.value.code == "unsafe_model"
    assert isinstance(info.value, ConversionError)
    return str(info.value)


# -- (a) the hostile models are real ---------------------------------------------------------


@pytest.mark.slow
def test_write_file_model_really_writes(tmp_path):
    marker = tmp_path / "pwned.txt"
    model = _saved_model(makers_hostile.write_file_model(tmp_path / "write.zip", marker, "pwned"))
    assert not marker.exists()  # making the model only traced it
    out = _serve(model)
    assert marker.read_text() == "pwned"
    assert out.shape == (2, 1)


@pytest.mark.slow
def test_read_file_model_really_leaks_in_the_error_message(tmp_path, secret_file):
    import tensorflow as tf

    model = _saved_model(makers_hostile.read_file_model(tmp_path / "read.zip", secret_file))
    with pytest.raises(tf.errors.InvalidArgumentError, match=SECRET):
        _serve(model)


@pytest.mark.slow
def test_read_file_to_output_model_really_leaks_in_the_predictions(tmp_path, secret_file):
    model = _saved_model(makers_hostile.read_file_to_output_model(tmp_path / "out.zip", secret_file, nbytes=32))
    out = _serve(model)
    assert bytes(out[0].astype(np.uint8)).rstrip(b"\0").decode() == SECRET


@pytest.mark.slow
def test_matching_files_model_really_lists(tmp_path):
    listed = tmp_path / "listed"
    listed.mkdir()
    for name in ("a.key", "b.key", "c.txt"):
        (listed / name).write_text("x")
    model = _saved_model(makers_hostile.matching_files_model(tmp_path / "ls.zip", listed / "*.key"))
    assert _serve(model)[0, 0] == 2


@pytest.mark.slow
def test_checkpoint_write_and_print_models_really_write(tmp_path):
    prefix = tmp_path / "dropped" / "ckpt"
    _serve(_saved_model(makers_hostile.checkpoint_write_model(tmp_path / "ckpt.zip", prefix)))
    assert prefix.with_name("ckpt.index").is_file()
    printed = tmp_path / "printed.log"
    _serve(_saved_model(makers_hostile.print_to_file_model(tmp_path / "print.zip", printed)))
    assert printed.read_text().strip()


@pytest.mark.slow
def test_restore_from_path_model_really_steals_a_checkpoint(tmp_path):
    import tensorflow as tf

    victim = np.arange(1, 9, dtype=np.float32)
    prefix = tf.train.Checkpoint(v=tf.Variable(victim)).write(str(tmp_path / "victim" / "ckpt"))
    model = _saved_model(makers_hostile.restore_from_path_model(
        tmp_path / "steal.zip", prefix, "v/.ATTRIBUTES/VARIABLE_VALUE"))
    # tf.saved_model.load runs the TF1 saver's restore op; the stolen values are the output.
    np.testing.assert_array_equal(_serve(model)[0], victim)


_CHILD = textwrap.dedent("""
    import os, resource, sys
    limit = int(sys.argv[2])
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    serving = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    print("calling", flush=True)
    try:
        serving(x=tf.ones([1, 8]))
    except tf.errors.ResourceExhaustedError as exc:
        print("exhausted:", " ".join(exc.message.split()), flush=True)
        sys.exit(3)
    print("returned", flush=True)
""")


def _start_child(saved_model_dir: Path, address_space_limit: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(saved_model_dir), str(address_space_limit)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.slow
def test_infinite_loop_model_really_never_returns(tmp_path):
    model = _saved_model(makers_hostile.infinite_loop_model(tmp_path / "loop.zip"))
    child = _start_child(model)
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(5)
        assert child.poll() is None, child.stdout.read()
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_huge_allocation_model_really_asks_for_20_gib(tmp_path):
    model = _saved_model(makers_hostile.huge_allocation_model(tmp_path / "huge.zip", gigabytes=20))
    # Capped at 12 GiB of address space so the attempt fails here instead of paging the host.
    child = _start_child(model, address_space_limit=12 << 30)
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 3, out
    assert f"shape[{20 * (1 << 30) // 4}]" in out


# -- (b) the op check refuses them, naming the op and the function ----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("make, op", [
    (lambda d, s: makers_hostile.write_file_model(d / "m.zip", d / "pwned.txt", "pwned"), "WriteFile"),
    (lambda d, s: makers_hostile.read_file_model(d / "m.zip", s), "ReadFile"),
    (lambda d, s: makers_hostile.read_file_to_output_model(d / "m.zip", s), "ReadFile"),
    (lambda d, s: makers_hostile.matching_files_model(d / "m.zip", d / "*"), "MatchingFiles"),
    (lambda d, s: makers_hostile.checkpoint_write_model(d / "m.zip", d / "ckpt"), "SaveV2"),
    (lambda d, s: makers_hostile.print_to_file_model(d / "m.zip", d / "printed.log"), "PrintV2"),
], ids=["write", "read-assert", "read-output", "matching", "savev2", "print-file"])
def test_hostile_models_are_refused_naming_the_op(tmp_path, secret_file, make, op):
    message = _refusal(_saved_model(make(tmp_path, secret_file)))
    assert message.startswith(f"refused op {op!r} in function '__inference_serving_default_"), message


@pytest.mark.slow
def test_restore_from_a_foreign_path_is_refused(tmp_path):
    model = _saved_model(makers_hostile.restore_from_path_model(tmp_path / "steal.zip", tmp_path / "ckpt", "v"))
    message = _refusal(model)
    assert message == ("refused op 'RestoreV2' in the top-level graph: restores a checkpoint from a path "
                       "the loader does not choose")


# -- (c) normal exports pass ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Small Keras models exported the ways users export them, plus a TF1 builder export."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("exports")
    sequential = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                   keras.layers.Dense(1)])
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    functional = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(h))
    dirs = {}
    for name, model in (("sequential", sequential), ("functional", functional)):
        dirs[f"{name}-export"] = root / f"{name}-export"
        model.export(str(dirs[f"{name}-export"]), format="tf_saved_model", verbose=False)
        dirs[f"{name}-tf-save"] = root / f"{name}-tf-save"
        tf.saved_model.save(model, str(dirs[f"{name}-tf-save"]))

    module = tf.Module()
    module.serve = tf.function(lambda x: {"output_0": tf.identity(x[:, :1])},
                               input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def log(x):
        tf.print(x)  # PrintV2 to stderr: fine
        return tf.identity(x)

    module.log = tf.function(log, input_signature=[tf.TensorSpec([None], tf.float32)])
    dirs["module-with-print"] = root / "module-with-print"
    tf.saved_model.save(module, str(dirs["module-with-print"]),
                        signatures={"serving_default": module.serve.get_concrete_function()})

    tf1 = tf.compat.v1
    dirs["tf1-builder"] = root / "tf1-builder"
    with tf.Graph().as_default(), tf1.Session() as session:
        x = tf1.placeholder(tf.float32, [None, 8], name="x")
        w = tf1.get_variable("w", [8, 1])
        session.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.Builder(str(dirs["tf1-builder"]))
        signature = tf1.saved_model.predict_signature_def({"x": x}, {"output_0": tf.matmul(x, w)})
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    return dirs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sequential-export", "sequential-tf-save", "functional-export",
                                  "functional-tf-save", "module-with-print", "tf1-builder"])
def test_normal_exports_pass(exports, name):
    check_saved_model(exports[name])


@pytest.mark.slow
def test_mobilenet_v2_export_passes_in_well_under_a_second(tmp_path):
    import keras

    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    model.export(str(tmp_path / "mobilenet"), format="tf_saved_model", verbose=False)
    check_saved_model(tmp_path / "mobilenet")  # warm the op-registry cache like a worker would
    started = time.perf_counter()
    check_saved_model(tmp_path / "mobilenet")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"{elapsed:.3f}s"


@pytest.mark.slow
def test_a_zipped_keras_export_round_trips_through_the_maker_helpers(exports, tmp_path):
    zipped = zip_directory(exports["functional-export"], tmp_path / "functional.zip")
    check_saved_model(makers_hostile.unzip(zipped, tmp_path / "unzipped"))


# -- the saver rule: checkpoint ops only where no signature or loader-called code reaches ------


def _edit_pb(saved_model_dir: Path, edit) -> Path:
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = saved_model_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    edit(saved_model.meta_graphs[0])
    pb_path.write_bytes(saved_model.SerializeToString())
    return saved_model_dir


def _function(meta_graph, prefix: str):
    (function,) = [f for f in meta_graph.graph_def.library.function if f.signature.name.startswith(prefix)]
    return function


def _string_const(node, value: str):
    import tensorflow as tf

    node.op = "Const"
    node.attr["dtype"].type = tf.string.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


@pytest.fixture
def keras_export(exports, tmp_path):
    import shutil

    return Path(shutil.copytree(exports["sequential-export"], tmp_path / "export"))


def _signature_reaches_the_save_function(meta_graph):
    meta_graph.signature_def["serving_default"].outputs["output_0"].name = meta_graph.saver_def.save_tensor_name


def _object_graph_names_the_save_function(meta_graph):
    save = _function(meta_graph, "__inference__traced_save_").signature.name
    meta_graph.object_graph_def.nodes.add().function.concrete_functions.append(save)


def _restore_function_writes(meta_graph):
    restore = _function(meta_graph, "__inference__traced_restore_")
    restore.node_def.add(name="evil_save", op="SaveV2",
                         input=["file_prefix", "RestoreV2/tensor_names:output:0",
                                "RestoreV2/shape_and_slices:output:0"])


def _restore_function_reads_a_constant_path(meta_graph):
    restore = _function(meta_graph, "__inference__traced_restore_")
    _string_const(restore.node_def.add(name="evil_prefix"), "/srv/other-tenant/variables/variables")
    (node,) = [n for n in restore.node_def if n.op == "RestoreV2"]
    node.input[0] = "evil_prefix:output:0"


def _restore_call_gets_another_path(meta_graph):
    _string_const(meta_graph.graph_def.node.add(name="evil_prefix"), "/srv/other-tenant/variables/variables")
    (call,) = [n for n in meta_graph.graph_def.node if n.name == meta_graph.saver_def.restore_op_name]
    call.input[0] = "evil_prefix"


@pytest.mark.slow
@pytest.mark.parametrize("edit, expected", [
    (_signature_reaches_the_save_function, "refused op 'SaveV2' in function '__inference__traced_save_"),
    (_object_graph_names_the_save_function, "refused op 'SaveV2' in function '__inference__traced_save_"),
    (_restore_function_writes, "refused op 'SaveV2' in function '__inference__traced_restore_"),
    (_restore_function_reads_a_constant_path, "refused op 'RestoreV2' in function '__inference__traced_restore_"),
    (_restore_call_gets_another_path, "refused op 'RestoreV2' in function '__inference__traced_restore_"),
], ids=["signature-to-save", "object-graph-to-save", "restore-writes", "restore-const-path",
        "restore-call-path"])
def test_checkpoint_ops_outside_the_saver_are_refused(keras_export, edit, expected):
    check_saved_model(keras_export)  # the untouched export passes
    assert _refusal(_edit_pb(keras_export, edit)).startswith(expected)


@pytest.mark.slow
def test_a_registered_op_called_through_a_function_attribute_is_refused(keras_export):
    def call_write_file(meta_graph):
        wrapper = next(f for f in meta_graph.graph_def.library.function
                       if f.signature.name.startswith("__inference_signature_wrapper_"))
        call = next(n for n in wrapper.node_def if n.op == "StatefulPartitionedCall")
        call.attr["f"].func.name = "WriteFile"

    message = _refusal(_edit_pb(keras_export, call_write_file))
    assert message.startswith("refused op 'WriteFile' in function '__inference_signature_wrapper_")
    assert "through a function attribute" in message


@pytest.mark.slow
def test_unknown_ops_are_refused(keras_export):
    def custom_op(meta_graph):
        function = _function(meta_graph, "__inference___call___")
        next(n for n in function.node_def if n.op == "MatMul").op = "MyCustomMatMul"

    message = _refusal(_edit_pb(keras_export, custom_op))
    assert message.startswith("refused op 'MyCustomMatMul' in function '__inference___call___")
    assert "custom-op library" in message


@pytest.mark.slow
def test_a_function_named_like_an_op_is_refused(keras_export):
    message = _refusal(_edit_pb(keras_export, lambda mg: setattr(
        mg.graph_def.library.function.add().signature, "name", "ReadFile")))
    assert "'ReadFile'" in message


# -- (d) no I/O, no refusal: loops and allocations are the sandbox's job -----------------------


@pytest.mark.slow
def test_infinite_loop_and_huge_allocation_pass_the_op_check(tmp_path):
    check_saved_model(_saved_model(makers_hostile.infinite_loop_model(tmp_path / "loop.zip")))
    check_saved_model(_saved_model(makers_hostile.huge_allocation_model(tmp_path / "huge.zip")))


# -- (e) broken or oversized files are refused cleanly ----------------------------------------


def test_garbage_saved_model_pb_is_a_conversion_error(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\xff" * 64)
    with pytest.raises(ConversionError, match="cannot parse saved_model.pb") as info:
        check_saved_model(tmp_path)
    assert info.value.code == "conversion_failed"


def test_empty_or_missing_saved_model_pb_is_a_conversion_error(tmp_path):
    with pytest.raises(ConversionError, match="cannot read saved_model.pb"):
        check_saved_model(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ConversionError, match="no meta graph"):
        check_saved_model(tmp_path)


def test_oversized_saved_model_pb_is_refused_before_reading(tmp_path):
    with open(tmp_path / "saved_model.pb", "wb") as f:
        f.truncate(_opcheck.MAX_SAVED_MODEL_PB_BYTES + 1)  # sparse: nothing is written or read
    assert _refusal(tmp_path).startswith(f"saved_model.pb is {_opcheck.MAX_SAVED_MODEL_PB_BYTES + 1} bytes")


def test_a_second_saved_model_file_is_refused(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    (tmp_path / "saved_model.pbtxt").write_text("meta_graphs {}")
    assert "saved_model.pbtxt" in _refusal(tmp_path)


@pytest.mark.slow
def test_node_and_function_caps(keras_export, monkeypatch):
    monkeypatch.setattr(_opcheck, "MAX_GRAPH_NODES", 10)
    assert "graph nodes; the limit is 10" in _refusal(keras_export)
    monkeypatch.setattr(_opcheck, "MAX_FUNCTIONS", 2)
    assert "functions; the limit is 2" in _refusal(keras_export)
