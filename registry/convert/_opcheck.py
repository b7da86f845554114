"""The front-line check on an uploaded SavedModel: refuse graphs that do I/O before loading.

A SavedModel is a program, not data: its serving function can read and write files,
list directories, open connections or call back into Python, and TensorFlow runs all
of that with the worker's privileges the moment the model is called (or, for the saver
and initialiser functions, the moment it is loaded). This module parses
``saved_model.pb`` with TensorFlow's protobuf classes only (nothing is imported into
a graph, loaded or run) and refuses, with the op and the function it was found in:

* ops that touch files, the network or the process (``_REFUSED`` and the prefixes
  after it, reviewed against every op in TensorFlow's registry), and ops whose
  attributes point them at a file or URL (``PrintV2`` to ``file://``, ``Debug*`` with
  ``debug_urls``, proto ops reading a descriptor file, ``CacheDataset`` with a
  filename);
* ops that are not in TensorFlow's registry: a model built against a custom-op
  library cannot be loaded by this TensorFlow anyway, and an unknown name is a name
  this check cannot judge;
* a ``saved_model.pb`` over ``MAX_SAVED_MODEL_PB_BYTES`` or a graph with more than
  ``MAX_GRAPH_NODES`` nodes or ``MAX_FUNCTIONS`` functions, before walking it.

Every node is checked: the top-level graph of every meta graph and every function in
its library, whether or not anything seems to call it. Reachability only decides where
checkpoint ops are accepted.

Checkpoint ops (SaveV2, RestoreV2, MergeV2Checkpoints and the V1 Save/Restore ops) are
in every normal export: ``tf.saved_model.save`` and ``model.export`` write a saver
(``saver_def``) whose save and restore nodes call ``__inference__traced_save_*`` and
``__inference__traced_restore_*``. The rule that lets those through and nothing else:

1. Code reachable from a signature (``serving_default``, ``__saved_model_init_op``,
   which loaders run), from any function the object graph names (concrete functions,
   resource ``_initialize``/``_create_resource`` functions and saveable objects'
   save/restore functions, which the TF2 loader calls itself), from any top-level
   node outside the saver, from any function with ``api_implements`` (Grappler may
   swap such a function for another at run time), and any function no saver node
   reaches, is model code: checkpoint ops there are refused.
2. Code reachable only from ``saver_def.restore_op_name`` is the restore side. Loaders
   run it (the TF1 C++ loader and ``tf.saved_model.load`` of a model without an object
   graph), so it may read checkpoints but never write them, and it may read only the
   path the loader feeds: each RestoreV2/Restore/RestoreSlice prefix must be
   ``saver_def.filename_tensor_name`` (top level) or a function argument that every
   call site fills with it. Otherwise a model could restore another model's
   checkpoint into its own variables and hand the values out through its outputs.
3. Code reachable only from ``saver_def.save_tensor_name`` is the save side, and may
   write checkpoints. Nothing in ModelDrop (loading, the TFLite and Core ML
   converters) runs it: it runs only when someone re-saves through this graph's TF1
   Saver. Its path is therefore not constrained; every other I/O op is still refused
   there.

What this check does not stop: a graph that loops forever, allocates without bound or
is simply slow has no I/O op to find. Those are the sandbox's job (time, memory and
filesystem limits around the worker); the tests say so explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from .catalog import ConversionError

__all__ = [
    "MAX_FUNCTIONS",
    "MAX_GRAPH_NODES",
    "MAX_SAVED_MODEL_PB_BYTES",
    "UnsafeModelError",
    "check_saved_model",
]

# Weights live in variables/, so the graph itself is small (a MobileNetV2 export is
# 1.6 MB, about 6,400 nodes); these caps only stop a file built to exhaust the parser.
MAX_SAVED_MODEL_PB_BYTES = 512 << 20  # bytes
MAX_GRAPH_NODES = 1_000_000  # nodes over the top-level graphs and all functions
MAX_FUNCTIONS = 20_000  # library functions over all meta graphs


class UnsafeModelError(ConversionError):
    """The SavedModel's graph would do file, network or process I/O, or is unfit to parse."""

    code = "unsafe_model"


_READS = "reads files on the server"
_WRITES = "writes files on the server"
_LISTS = "lists files on the server"
_DATASET_FILES = "a tf.data source or sink that reads or writes files"
_NETWORK = "talks to other processes or machines"
_PYTHON = "runs Python code in the worker"
_SUMMARY = "writes TensorBoard summaries to files"
_OPAQUE = "runs a program this check cannot inspect"

_REFUSED: dict[str, str] = {
    **dict.fromkeys(["ReadFile", "ImmutableConst", "RecordInput", "Skipgram", "GenerateVocabRemapping",
                     "LoadAndRemapMatrix", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2"],
                    _READS),
    **dict.fromkeys(["WriteFile", "DumpTensor", "CalibrationStatisticsSaver"], _WRITES),
    "MatchingFiles": _LISTS,
    "FileSystemSetConfiguration": "configures the server's filesystems",
    **dict.fromkeys(["PyFunc", "PyFuncStateless", "EagerPyFunc"], _PYTHON),
    "Abort": "ends the worker process",
    **dict.fromkeys([
        "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
        "TextLineDataset", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset",
        "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset", "MatchingFilesDataset",
        "ExperimentalMatchingFilesDataset", "SnapshotDataset", "SnapshotDatasetV2", "SnapshotDatasetReader",
        "SnapshotNestedDatasetReader", "SnapshotChunkDataset", "ListSnapshotChunksDataset", "SaveDataset",
        "SaveDatasetV2", "LoadDataset", "DistributedSave", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    ], _DATASET_FILES),
    **dict.fromkeys(["DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4",
                     "RegisterDataset", "RegisterDatasetV2"], "a tf.data service client (network)"),
    **dict.fromkeys(["DatasetFromGraph", "DeserializeIterator"],
                    "builds a dataset graph from a string at run time, which this check cannot inspect"),
    **dict.fromkeys([
        "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
        "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
        "IdentityReader", "IdentityReaderV2",
    ], "a TF1 reader (reads files)"),
    **dict.fromkeys([
        "SummaryWriter", "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
        "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
        "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter",
        "StatsAggregatorSetSummaryWriter",
    ], _SUMMARY),
    **dict.fromkeys(["_Send", "_Recv", "_HostSend", "_HostRecv", "Send", "Recv", "RemoteCall", "XlaSend", "XlaRecv",
                     "XlaSendToHost", "XlaRecvFromHost", "XlaHostCompute", "_XlaHostComputeMlir",
                     "_XlaSendFromHost", "_XlaSendFromHostV2", "_XlaRecvAtHost", "_XlaRecvAtHostV2",
                     "DeleteRpcFutureResource"], _NETWORK),
    **dict.fromkeys(["XlaCallModule", "XlaCustomCall", "XlaCustomCallV2", "MlirPassthroughOp"], _OPAQUE),
    **dict.fromkeys(["DTensorRestoreV2", "Restore", "RestoreSlice", "RestoreV2"], "reads checkpoint files"),
    **dict.fromkeys(["Save", "SaveSlices", "SaveV2", "MergeV2Checkpoints"], "writes checkpoint files"),
}
_REFUSED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Reader", "a TF1 reader (reads files)"),
    ("Rpc", _NETWORK),
    ("Collective", "a collective op (talks to other workers)"),
    ("Nccl", _NETWORK),
    ("_Nccl", _NETWORK),
    ("DTensor", "a DTensor mesh op (collectives and checkpoint I/O across devices)"),
    ("Execute", "a device runtime op"),
    ("Infeed", "a TPU host transfer"),
    ("Outfeed", "a TPU host transfer"),
)
_REFUSED_INFIXES = ("TPU", "Tpu")  # TPUExecute, TPUCompile, ConfigureDistributedTPU, GetTpuTaskId, ...

# Checkpoint ops are refused by _REFUSED unless the saver rule above lets them through.
_CHECKPOINT_READS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
_CHECKPOINT_WRITES = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_PRINT_STREAMS = frozenset({"stderr", "stdout", "log(info)", "log(warning)", "log(error)"})

_MODEL, _RESTORE, _SAVE = "model", "restore", "save"


def check_saved_model(saved_model_dir: Path) -> None:
    """Refuse a SavedModel whose graph would do file, network or process I/O.

    Parses ``saved_model.pb`` only; nothing is loaded or run.

    Raises:
        UnsafeModelError: a refused or unknown op (the message names the op, the
            function it is in and why), an over-size file or graph, or a second
            SavedModel file next to ``saved_model.pb`` that a loader might read instead.
        ConversionError: ``saved_model.pb`` is missing or does not parse.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model_dir = Path(saved_model_dir)
    pb_path = saved_model_dir / "saved_model.pb"
    for other in ("saved_model.pbtxt", "saved_model.cpb"):
        if (saved_model_dir / other).exists():
            raise UnsafeModelError(
                f"SavedModel has both saved_model.pb and {other}; loaders differ in which they read, "
                "so only saved_model.pb is accepted")
    try:
        size = pb_path.stat().st_size
    except OSError as exc:
        raise ConversionError(f"cannot read saved_model.pb: {exc}") from exc
    if size > MAX_SAVED_MODEL_PB_BYTES:
        raise UnsafeModelError(
            f"saved_model.pb is {size} bytes; the limit is {MAX_SAVED_MODEL_PB_BYTES} bytes "
            "(weights belong in variables/, not in the graph)")
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(pb_path.read_bytes())
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ConversionError(f"cannot parse saved_model.pb: {exc}") from exc
    if not saved_model.meta_graphs:
        raise ConversionError("saved_model.pb holds no meta graph")
    functions = sum(len(mg.graph_def.library.function) for mg in saved_model.meta_graphs)
    if functions > MAX_FUNCTIONS:
        raise UnsafeModelError(f"SavedModel has {functions} functions; the limit is {MAX_FUNCTIONS}")
    nodes = sum(len(mg.graph_def.node) + sum(len(f.node_def) for f in mg.graph_def.library.function)
                for mg in saved_model.meta_graphs)
    if nodes > MAX_GRAPH_NODES:
        raise UnsafeModelError(f"SavedModel has {nodes} graph nodes; the limit is {MAX_GRAPH_NODES}")
    for meta_graph in saved_model.meta_graphs:
        _MetaGraphCheck(meta_graph).run()


class _MetaGraphCheck:
    """One meta graph: classify code as model/restore/save, then check every node."""

    def __init__(self, meta_graph):
        self.meta_graph = meta_graph
        graph = meta_graph.graph_def
        self.nodes = {node.name: node for node in graph.node}
        self.functions = {f.signature.name: f for f in graph.library.function}
        self.gradients = {g.function_name: g.gradient_func for g in graph.library.gradient}
        saver = meta_graph.saver_def
        self.filename_node = _node_name(saver.filename_tensor_name) if saver.filename_tensor_name else None
        # referrers[f]: (function name or None for the top level, node) for every node naming f
        self.referrers: dict[str, list[tuple[str | None, object]]] = {}
        self._function_nodes: dict[str, dict[str, object]] = {}

    def run(self) -> None:
        graph = self.meta_graph.graph_def
        # TensorFlow refuses duplicate names when importing; here they would let one node
        # hide behind another's name, so they are refused before anything is classified.
        if len(self.nodes) != len(graph.node) or len(self.functions) != len(graph.library.function):
            raise UnsafeModelError("SavedModel graph has duplicate node or function names")
        for function in graph.library.function:
            if len({n.name for n in function.node_def}) != len(function.node_def):
                raise UnsafeModelError(f"function {function.signature.name!r} has duplicate node names")
        for name in self.functions:
            if _is_registered_op(name):
                raise UnsafeModelError(f"function {name!r} has the name of a TensorFlow op")
        top_context, func_context = self._classify()
        for node in self.meta_graph.graph_def.node:
            self._check_node(node, None, top_context[node.name])
        for name, function in self.functions.items():
            for node in function.node_def:
                self._check_node(node, name, func_context[name])

    # -- reachability ---------------------------------------------------------------------

    def _classify(self) -> tuple[dict[str, str], dict[str, str]]:
        saver = self.meta_graph.saver_def
        restore_side = self._ancestors([_node_name(saver.restore_op_name)] if saver.restore_op_name else [])
        save_side = self._ancestors([_node_name(saver.save_tensor_name)] if saver.save_tensor_name else [])
        saver_side = restore_side | save_side
        model_roots = [name for name in self.nodes if name not in saver_side]
        for signature in self.meta_graph.signature_def.values():
            model_roots.extend(_node_name(t) for info in signature.outputs.values() for t in _tensor_names(info))
            model_roots.extend(_node_name(t) for info in signature.inputs.values() for t in _tensor_names(info))
        model_nodes = self._ancestors(model_roots)
        top_context = {}
        for name in self.nodes:
            if name in model_nodes or name not in saver_side:
                top_context[name] = _MODEL
            else:
                top_context[name] = _RESTORE if name in restore_side else _SAVE

        edges = {name: set(self._function_refs(name, f.node_def)) for name, f in self.functions.items()}
        for name, gradient in self.gradients.items():
            edges.setdefault(name, set()).add(gradient)
        top_refs = {name: set(self._function_refs(None, [node])) for name, node in self.nodes.items()}

        def refs_of(context: str) -> set[str]:
            return {f for name, ctx in top_context.items() if ctx == context for f in top_refs[name]}

        saver_funcs = _closure(refs_of(_RESTORE) | refs_of(_SAVE), edges)
        model_seeds = refs_of(_MODEL) | set(self._object_graph_functions())
        model_seeds |= {name for name, f in self.functions.items()
                        if name not in saver_funcs or "api_implements" in f.attr}
        model_funcs = _closure(model_seeds, edges)
        restore_funcs = _closure(refs_of(_RESTORE), edges) - model_funcs
        func_context = {}
        for name in self.functions:
            if name in model_funcs:
                func_context[name] = _MODEL
            else:
                func_context[name] = _RESTORE if name in restore_funcs else _SAVE
        return top_context, func_context

    def _ancestors(self, roots: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = [r for r in roots if r in self.nodes]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for ref in self.nodes[name].input:
                parent = _node_name(ref)
                if parent in self.nodes and parent not in seen:
                    stack.append(parent)
        return seen

    def _function_refs(self, scope: str | None, nodes) -> Iterator[str]:
        """Library functions named by these nodes (as the op or in attrs); records referrers."""
        for node in nodes:
            for name in _referenced_names(node):
                if name in self.functions:
                    self.referrers.setdefault(name, []).append((scope, node))
                    yield name

    def _object_graph_functions(self) -> Iterator[str]:
        graph = self.meta_graph.object_graph_def
        yield from graph.concrete_functions.keys()
        for obj in graph.nodes:
            kind = obj.WhichOneof("kind")
            if kind == "function":
                yield from obj.function.concrete_functions
            elif kind == "bare_concrete_function":
                yield obj.bare_concrete_function.concrete_function_name
            for saveable in obj.saveable_objects.values():
                for index in (saveable.save_function, saveable.restore_function):
                    if 0 <= index < len(graph.nodes) and graph.nodes[index].WhichOneof("kind") == "function":
                        yield from graph.nodes[index].function.concrete_functions

    # -- per node -------------------------------------------------------------------------

    def _check_node(self, node, scope: str | None, context: str) -> None:
        where = f"function {scope!r}" if scope is not None else "the top-level graph"
        op = node.op
        if op in _CHECKPOINT_READS or op in _CHECKPOINT_WRITES:
            reason = self._checkpoint_refusal(node, scope, context)
        elif op in self.functions:
            reason = None
        elif op in _CACHE_OPS:
            reason = None if self._is_empty_string_const(node.input[1:2], scope) else (
                "a tf.data cache that writes files (its filename is not a constant empty string)")
        else:
            reason = _static_refusal(op) or _attr_refusal(node)
        if reason:
            raise UnsafeModelError(f"refused op {op!r} in {where}: {reason}")
        for name in _referenced_names(node):
            if name == op or name in self.functions:
                continue
            # An attr naming a registered op instantiates that op as a one-node function.
            called = _static_refusal(name) or (
                "its attributes cannot be checked when it is called through a function attribute"
                if name in _ATTR_RULES or name in _CACHE_OPS else None)
            if called:
                raise UnsafeModelError(
                    f"refused op {name!r} in {where} (called by node {node.name!r} through a function "
                    f"attribute): {called}")

    def _checkpoint_refusal(self, node, scope: str | None, context: str) -> str | None:
        if node.op in _CHECKPOINT_WRITES:
            if context == _SAVE:
                return None
            if context == _RESTORE:
                return "writes checkpoint files from the saver's restore function, which loaders run"
            return "writes checkpoint files; only the saver's save function, which no signature reaches, may"
        if context != _RESTORE:
            return ("reads checkpoint files; only the saver's restore function, which no signature reaches, "
                    "may")
        if not node.input or not self._is_loader_path(node.input[0], scope):
            return "restores a checkpoint from a path the loader does not choose"
        return None

    def _is_empty_string_const(self, refs, scope: str | None) -> bool:
        if len(refs) != 1:
            return False
        if scope is None:
            nodes = self.nodes
        else:
            nodes = self._function_nodes.get(scope)
            if nodes is None:
                nodes = self._function_nodes[scope] = {n.name: n for n in self.functions[scope].node_def}
        const = nodes.get(_node_name(refs[0]))
        if const is None or const.op != "Const":
            return False
        tensor = const.attr["value"].tensor
        return list(tensor.string_val) == [b""] and not tensor.tensor_content

    def _is_loader_path(self, ref: str, scope: str | None) -> bool:
        """Whether this input is the checkpoint path the loader feeds (saver_def.filename_tensor_name)."""
        if self.filename_node is None:
            return False
        if scope is None:
            return _node_name(ref) == self.filename_node
        args = [arg.name for arg in self.functions[scope].signature.input_arg]
        if ref not in args:
            return False
        index = args.index(ref)
        callers = self.referrers.get(scope, [])
        for caller_scope, caller in callers:
            direct = caller.op == scope
            via_call = caller.op in _CALL_OPS and "f" in caller.attr and caller.attr["f"].func.name == scope
            if caller_scope is not None or not (direct or via_call):
                return False
            data_inputs = [i for i in caller.input if not i.startswith("^")]
            if index >= len(data_inputs) or _node_name(data_inputs[index]) != self.filename_node:
                return False
        return bool(callers)


@cache
def _static_refusal(op: str) -> str | None:
    """Why this op is refused whatever its attributes, or None. Unknown ops are refused too."""
    if op in _REFUSED:
        return _REFUSED[op]
    for prefix, reason in _REFUSED_PREFIXES:
        if op.startswith(prefix):
            return reason
    if any(infix in op for infix in _REFUSED_INFIXES):
        return "a TPU runtime op (compiles, executes or configures devices)"
    if not _is_registered_op(op):
        return ("not an op this TensorFlow knows; a model that needs a custom-op library cannot be "
                "loaded here")
    return None


@cache
def _is_registered_op(name: str) -> bool:
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def _print_refusal(node) -> str | None:
    stream = node.attr["output_stream"].s.decode("utf-8", "replace") if "output_stream" in node.attr else "stderr"
    return None if stream in _PRINT_STREAMS else f"prints to {stream!r} (a file)"


def _proto_refusal(node) -> str | None:
    source = node.attr["descriptor_source"].s if "descriptor_source" in node.attr else b"local://"
    return None if source == b"local://" or source.startswith(b"bytes://") else "reads a descriptor file"


def _vocab_refusal(node) -> str | None:
    return _READS if "vocab_file" in node.attr and node.attr["vocab_file"].s else None


_ATTR_RULES = {
    "PrintV2": _print_refusal,
    "DecodeProtoV2": _proto_refusal,
    "EncodeProto": _proto_refusal,
    "FixedUnigramCandidateSampler": _vocab_refusal,
}
# CacheDataset keeps elements in memory only when its filename input is "", which can be
# seen only when that input is a constant; _check_node refuses every other filename.
_CACHE_OPS = frozenset({"CacheDataset", "CacheDatasetV2"})


def _attr_refusal(node) -> str | None:
    for key in ("debug_urls", "debug_ops_spec"):  # Debug*/Copy ops stream tensors to file:// or grpc://
        if key in node.attr and node.attr[key].list.s:
            return f"sends tensors to {', '.join(s.decode('utf-8', 'replace') for s in node.attr[key].list.s)}"
    rule = _ATTR_RULES.get(node.op)
    return rule(node) if rule else None


def _referenced_names(node) -> Iterator[str]:
    """The op and every function name in the node's attrs (If/While branches, f, map funcs...)."""
    yield node.op
    stack = list(node.attr.values())
    while stack:
        value = stack.pop()
        kind = value.WhichOneof("value")
        if kind == "func":
            funcs = [value.func]
        elif kind == "list" and value.list.func:
            funcs = list(value.list.func)
        else:
            continue
        for func in funcs:
            if func.name:
                yield func.name
            stack.extend(func.attr.values())


def _closure(seeds: Iterable[str], edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(seeds)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(edges.get(name, ()))
    return seen


def _node_name(ref: str) -> str:
    """'^a', 'a:0', 'a:output:0' -> 'a'."""
    return ref.lstrip("^").split(":", 1)[0]


def _tensor_names(info) -> Iterator[str]:
    kind = info.WhichOneof("encoding")
    if kind == "name":
        yield info.name
    elif kind == "coo_sparse":
        sparse = info.coo_sparse
        yield from (sparse.values_tensor_name, sparse.indices_tensor_name, sparse.dense_shape_tensor_name)
    elif kind == "composite_tensor":
        for component in info.composite_tensor.components:
            yield from _tensor_names(component)
