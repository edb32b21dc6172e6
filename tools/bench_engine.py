"""The whole-engine paths of ``graphbuild bench``: ``engine.run`` as a user calls it, and the bare
ONNX Runtime session it is judged against.

- ``engine.run (tp 1, out=)``: the engine writing into a caller's preallocated array;
- ``engine.run (tp N)``: the default call, ``engine.run(feeds)``, which returns new arrays, at each
  tensor-parallel size of the run (the vocabulary split over N ranks, all run in this process);
- ``ORT Gather, session.run``: a bare ``InferenceSession.run(None, feeds)`` of a one-node ONNX
  ``Gather`` model holding the same table as an initializer (handed to ONNX Runtime from memory),
  which allocates its output on every call as ``engine.run`` does (for bfloat16, which
  ``session.run`` cannot return, ``run_with_ort_values``).

The engines are ``examples/embedding_tp.py``'s network (``layers.Embedding`` named ``wte``) built
with the benchmark's table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from graphbuild import dtypes
from graphbuild.runtime.ortvalues import from_ortvalue, to_ortvalue

_OPSET = 21


def build_engine(table: np.ndarray, dtype: dtypes.DType, root: Path, tp_size: int = 1) -> Path:
    """Builds the embedding network with ``table`` (the vocabulary split over ``tp_size`` ranks)
    into ``root/engine_tp<N>``."""
    import graphbuild as gb
    from graphbuild import layers
    from graphbuild.runtime.session import CPU

    vocab, hidden = table.shape
    wte = layers.Embedding(vocab, hidden, dtype=dtype.name, tp_size=tp_size, sharding_dim=0, weight=table, name="wte")
    net = gb.Network("bench_embedding")
    with net:
        ids = net.add_input("input_ids", dtype="int64", shape=("batch", "seq"))
        net.mark_output(wte(ids), "embeddings")
    path = Path(root) / f"engine_tp{tp_size}"
    engine = gb.build(net, path, overwrite=True, providers=[CPU])
    del engine
    return path


def gather_session(table: np.ndarray, dtype: dtypes.DType, options: ort.SessionOptions, providers: Sequence[str]) -> ort.InferenceSession:
    """A session of ``out = Gather(table, ids)`` whose table is an initializer that ``options``
    hands over from memory (``add_external_initializers``), so that ``ids`` is its only input."""
    vocab, hidden = table.shape
    initializer = TensorProto(name="table", data_type=dtype.onnx, dims=[vocab, hidden], data_location=TensorProto.EXTERNAL)
    entry = initializer.external_data.add()
    entry.key, entry.value = "location", "in-memory"  # never read: the value comes from options
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["tokens"])
    out = helper.make_tensor_value_info("out", dtype.onnx, ["tokens", hidden])
    node = helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)
    graph = helper.make_graph([node], "bench_gather_run", [ids], [out], initializer=[initializer])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=10)
    options.add_external_initializers(["table"], [to_ortvalue(np.ascontiguousarray(table))])
    return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))


def load_engines(engine_dirs: dict[int, Path], providers: Sequence[str], threads: int, skipped: dict[str, str]) -> dict[int, Any]:
    """Loads each tp size's engine; one that does not load is left out with the reason in ``skipped``."""
    from graphbuild.engine import Engine

    engines = {}
    for tp_size, path in engine_dirs.items():
        try:
            engines[tp_size] = Engine.load(path, providers=providers, verify=False, intra_op_threads=threads)
        except Exception as exc:
            skipped[f"engine.run (tp {tp_size})"] = f"the engine does not load: {' '.join(str(exc).split())[:200]}"
    return engines


def engine_paths(engines: dict[int, Any], id_sets: Sequence[np.ndarray], hidden: int, dtype: dtypes.DType, device: str, path_type: Any) -> list[Any]:
    """``engine.run`` with ``out=`` (tp 1, CPU only) and without (every tp size), as ``path_type``
    (``bench_paths.TimedPath``): keys ``engine`` and ``engine_run`` (tp 1), ``engine_run_tp<N>``."""
    count = len(id_sets)
    feeds = [{"input_ids": ids.reshape(1, -1)} for ids in id_sets]
    found = []
    for tp_size, engine in engines.items():
        name = engine.outputs[0].name

        def run(i: int, engine: Any = engine) -> Any:
            return engine.run(feeds[i % count])

        def result(i: int, run: Any = run, name: str = name) -> np.ndarray:
            return run(i)[name].reshape(-1, hidden)

        key = "engine_run" if tp_size == 1 else f"engine_run_tp{tp_size}"
        label = f"engine.run (tp {tp_size})" if device == "cpu" else f"engine.run (tp {tp_size}, host arrays)"
        # A vocab split sums each row with the other ranks' zero rows: -0.0 comes back as +0.0.
        found.append(path_type(key, label, run, result, "full" if tp_size == 1 else "summed"))
        if tp_size == 1 and device == "cpu":
            found.insert(0, _out_path(engine, name, feeds, hidden, dtype, path_type))
    return found


def _out_path(engine: Any, name: str, feeds: Sequence[dict[str, np.ndarray]], hidden: int, dtype: dtypes.DType, path_type: Any) -> Any:
    from graphbuild.tools.bench_paths import aligned_zeros

    count = len(feeds)
    target = aligned_zeros((1, len(feeds[0]["input_ids"][0]), hidden), dtype.numpy)
    out = {name: target}

    def run(i: int) -> Any:
        return engine.run(feeds[i % count], out=out)

    def result(i: int) -> np.ndarray:
        return run(i)[name].reshape(-1, hidden)

    return path_type("engine", "engine.run (tp 1, out=)", run, result, "full")


def session_path(session: Optional[ort.InferenceSession], id_sets: Sequence[np.ndarray], dtype: dtypes.DType, path_type: Any) -> Optional[Any]:
    """``session.run(None, {"ids": ids})`` of ``gather_session``'s session, key ``ort_gather_run``;
    for bfloat16, which ``session.run`` cannot return as numpy, ``run_with_ort_values`` (the
    output stays an OrtValue)."""
    if session is None:
        return None
    count = len(id_sets)
    if dtype == dtypes.bfloat16:
        values = [{"ids": to_ortvalue(ids)} for ids in id_sets]

        def run(i: int) -> Any:
            return session.run_with_ort_values(["out"], values[i % count])

        def result(i: int) -> np.ndarray:
            return from_ortvalue(run(i)[0])

        return path_type("ort_gather_run", "ORT Gather, run_with_ort_values", run, result, "full")
    feeds = [{"ids": ids} for ids in id_sets]

    def run_numpy(i: int) -> Any:
        return session.run(None, feeds[i % count])

    return path_type("ort_gather_run", "ORT Gather, session.run", run_numpy, lambda i: run_numpy(i)[0], "full")
