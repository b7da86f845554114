"""Hostile SavedModel uploads: real models that do harm when a worker loads and calls them.

Each maker writes a ``.zip`` of a SavedModel directory, as an ML engineer would upload
it, with a ``serving_default`` signature taking one float32 input ``x`` of shape
(None, 8) and returning ``{"output_0": float32}``, so it passes the signature checks in
``registry.convert._source`` and only the op check or the sandbox stands in its way.
Paths and sizes are baked into the graph at save time; nothing harmful runs while
making the model (the graph is only traced), only when it is loaded and called.
TensorFlow is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.makers_keras import zip_directory

FEATURES = 8
OUTPUT_KEY = "output_0"


def _save_serving(out_zip: Path, serve) -> Path:
    """Save ``serve(x) -> float32 tensor`` as the serving_default signature and zip it."""
    import tensorflow as tf

    def serving_default(x):
        return {OUTPUT_KEY: serve(x)}

    module = tf.Module()
    module.serve = tf.function(serving_default,
                               input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
    out_zip = Path(out_zip)
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = Path(scratch) / "saved_model"
        tf.saved_model.save(module, str(export_dir),
                            signatures={"serving_default": module.serve.get_concrete_function()})
        return zip_directory(export_dir, out_zip)


def _row_sum(x):
    import tensorflow as tf

    return tf.reduce_sum(x, axis=1, keepdims=True)


def write_file_model(out_zip: Path, target_path: str | Path, marker_text: str) -> Path:
    """Serving writes ``marker_text`` to ``target_path`` (tf.io.write_file), then returns the row sum."""
    import tensorflow as tf

    def serve(x):
        written = tf.io.write_file(str(target_path), marker_text)
        with tf.control_dependencies([written]):
            return tf.identity(_row_sum(x))

    return _save_serving(out_zip, serve)


def read_file_model(out_zip: Path, secret_path: str | Path) -> Path:
    """Serving reads ``secret_path`` and fails an Assert carrying its content, so the
    secret lands in the error message (and so in a conversion error report)."""
    import tensorflow as tf

    def serve(x):
        content = tf.io.read_file(str(secret_path))
        never = tf.equal(tf.strings.length(content), -1)  # decided at run time, never true
        check = tf.debugging.Assert(never, [content], summarize=1 << 16)
        with tf.control_dependencies([check]):
            return tf.identity(_row_sum(x))

    return _save_serving(out_zip, serve)


def read_file_to_output_model(out_zip: Path, secret_path: str | Path, nbytes: int = 16) -> Path:
    """Serving reads ``secret_path`` and returns its first ``nbytes`` bytes as the output:
    shape (batch, nbytes), each row the byte values as floats, zero-padded. No error at
    all: the secret leaves through the predictions."""
    import tensorflow as tf

    def serve(x):
        content = tf.io.read_file(str(secret_path))
        head = tf.strings.substr(content, 0, nbytes)
        raw = tf.io.decode_raw(tf.strings.join([head, tf.constant(b"\0" * nbytes)]), tf.uint8)[:nbytes]
        row = tf.cast(raw, tf.float32)
        return tf.zeros_like(x[:, :1]) + row[None, :]

    return _save_serving(out_zip, serve)


def matching_files_model(out_zip: Path, pattern: str | Path) -> Path:
    """Serving lists ``pattern`` (tf.io.matching_files) and returns the number of matches."""
    import tensorflow as tf

    def serve(x):
        count = tf.cast(tf.size(tf.io.matching_files(str(pattern))), tf.float32)
        return tf.zeros_like(x[:, :1]) + count

    return _save_serving(out_zip, serve)


def checkpoint_write_model(out_zip: Path, checkpoint_prefix: str | Path) -> Path:
    """Serving writes a checkpoint (SaveV2) at ``checkpoint_prefix``: ``<prefix>.index``
    and ``<prefix>.data-00000-of-00001`` holding the input batch."""
    import tensorflow as tf

    def serve(x):
        saved = tf.raw_ops.SaveV2(prefix=str(checkpoint_prefix), tensor_names=["x"], shape_and_slices=[""],
                                  tensors=[x])
        with tf.control_dependencies([saved]):
            return tf.identity(_row_sum(x))

    return _save_serving(out_zip, serve)


def print_to_file_model(out_zip: Path, target_path: str | Path) -> Path:
    """Serving appends the input batch to ``target_path`` (tf.print to a file:// stream)."""
    import tensorflow as tf

    def serve(x):
        printed = tf.print(x, output_stream=f"file://{target_path}")
        with tf.control_dependencies([printed]):
            return tf.identity(_row_sum(x))

    return _save_serving(out_zip, serve)


def infinite_loop_model(out_zip: Path) -> Path:
    """Serving runs a tf.while_loop that never ends (a float counter below +inf; once it
    reaches 2**24, adding 1 no longer changes it). No file or network op at all."""
    import tensorflow as tf

    def serve(x):
        start = tf.reduce_sum(x) * 0.0  # from the input, so nothing is known at trace time
        (end,) = tf.while_loop(lambda i: i < float("inf"), lambda i: (i + 1.0,), [start])
        return _row_sum(x) + end

    return _save_serving(out_zip, serve)


def huge_allocation_model(out_zip: Path, gigabytes: float = 20) -> Path:
    """Serving fills a float32 tensor of about ``gigabytes`` GiB and reduces it. The size
    is multiplied by a factor computed from the batch size at run time, so it cannot be
    folded into a constant at save time."""
    import tensorflow as tf

    elements = int(gigabytes * (1 << 30)) // 4

    def serve(x):
        one = tf.minimum(tf.shape(x, out_type=tf.int64)[0], 1)  # 1 for any non-empty batch
        big = tf.fill(tf.reshape(one * elements, [1]), 1.0)
        return _row_sum(x) + tf.reduce_sum(big)

    return _save_serving(out_zip, serve)


def restore_from_path_model(out_zip: Path, checkpoint_prefix: str | Path, tensor_name: str,
                            shape: tuple[int, ...] = (FEATURES,)) -> Path:
    """A TF1-style SavedModel (no object graph) whose saver restores its variable from
    ``checkpoint_prefix`` instead of its own variables/, and whose serving output is that
    variable. ``tf.saved_model.load`` runs the saver's restore op, so loading this
    model copies tensor ``tensor_name`` of someone else's checkpoint into its outputs."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    tf1 = tf.compat.v1
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = Path(scratch) / "saved_model"
        with tf.Graph().as_default(), tf1.Session() as session:
            x = tf1.placeholder(tf.float32, [None, FEATURES], name="x")
            stolen = tf1.get_variable("stolen", list(shape), initializer=tf1.zeros_initializer())
            flat = tf.reshape(stolen, [1, -1])
            y = tf.zeros_like(x[:, :1]) + flat
            session.run(tf1.global_variables_initializer())
            builder = tf1.saved_model.Builder(str(export_dir))
            signature = tf1.saved_model.predict_signature_def({"x": x}, {OUTPUT_KEY: y})
            builder.add_meta_graph_and_variables(session, ["serve"],
                                                 signature_def_map={"serving_default": signature})
            builder.save()
        pb_path = export_dir / "saved_model.pb"
        saved_model = saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
        graph = saved_model.meta_graphs[0].graph_def
        nodes = {node.name: node for node in graph.node}
        prefix = graph.node.add(name="stolen_prefix", op="Const")
        prefix.attr["dtype"].type = tf.string.as_datatype_enum
        prefix.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(str(checkpoint_prefix)))
        restore = nodes["save/RestoreV2"]
        restore.input[0] = "stolen_prefix"
        names = nodes[restore.input[1]]
        names.attr["value"].tensor.CopyFrom(tf.make_tensor_proto([tensor_name]))
        pb_path.write_bytes(saved_model.SerializeToString())
        return zip_directory(export_dir, Path(out_zip))


def unzip(zip_path: Path, dest: Path) -> Path:
    """Extract a maker's zip (trusted: the tests made it) and return the SavedModel directory."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.unpack_archive(str(zip_path), str(dest), "zip")
    return dest
