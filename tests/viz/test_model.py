"""The JSON data model of pictures (what the HTML viewer draws and the other formats are written
from): every node and edge of known networks, ranks, segments and collective bridges, scopes, and
a layout that runs top to bottom without overlaps. Expected values are written out by hand or
read from the IR and the ONNX files independently of graphbuild.viz."""

from __future__ import annotations

import onnx
import pytest

import graphbuild as gb
from graphbuild.build import rank_networks
from graphbuild.passes import segment
from graphbuild.viz import build_model
from graphbuild.viz.render import to_json

from .conftest import embedding_net, gpt_nets


def model_of(target, **kwargs):
    return to_json(build_model(target, **kwargs))


def ids(data):
    return {n["id"] for n in data["nodes"]}


def edge_set(data):
    return {(e["source"], e["target"], e["tensor"]) for e in data["edges"]}


# ------------------------------------------------------------------------- the embedding network
EMBEDDING_CASES = {
    # (tp_size, sharding_dim): (collective op or None, each rank's shard as the picture states it)
    (1, 0): (None, ["rows [0, 10) of 10 (sharding_dim=0)"]),
    (2, 0): ("allreduce", ["rows [0, 5) of 10 (sharding_dim=0)", "rows [5, 10) of 10 (sharding_dim=0)"]),
    (2, 1): ("allgather", ["columns [0, 3) of 6 (sharding_dim=1)", "columns [3, 6) of 6 (sharding_dim=1)"]),
    (4, 0): ("allreduce", [f"rows [{a}, {b}) of 10 (sharding_dim=0)" for a, b in ((0, 3), (3, 6), (6, 9), (9, 10))]),
    (4, 1): ("allgather", [f"columns [{a}, {b}) of 6 (sharding_dim=1)" for a, b in ((0, 2), (2, 4), (4, 5), (5, 6))]),
}


@pytest.mark.parametrize("tp_size,sharding_dim", sorted(EMBEDDING_CASES))
def test_embedding_ranks_picture(tp_size, sharding_dim):
    collective, shards = EMBEDDING_CASES[tp_size, sharding_dim]
    data = model_of(embedding_net(tp_size, sharding_dim))
    ranks = range(tp_size)
    expected = {f"r{r}/{k}" for r in ranks for k in ("in:input_ids", "op:wte/lookup", "out:embeddings")}
    if collective:
        expected |= {f"r{r}/op:wte/{collective}" for r in ranks}
    assert ids(data) == expected
    if collective:
        edges = {(f"r{r}/in:input_ids", f"r{r}/op:wte/lookup", "input_ids") for r in ranks}
        edges |= {(f"r{r}/op:wte/lookup", f"r{r}/op:wte/{collective}", "wte/lookup") for r in ranks}
        edges |= {(f"r{r}/op:wte/{collective}", f"r{r}/out:embeddings", "wte") for r in ranks}
    else:
        edges = {("r0/in:input_ids", "r0/op:wte/lookup", "input_ids"), ("r0/op:wte/lookup", "r0/out:embeddings", "wte")}
    assert edge_set(data) == edges
    assert [r["label"] for r in data["ranks"]] == [f"rank {r}" for r in ranks]
    assert [(s["rank"], s["file"], s["nodes"]) for s in data["segments"]] == [(r, f"rank{r}/segment0.onnx", [f"r{r}/op:wte/lookup"]) for r in ranks]
    lookups = {n["rank"]: n for n in data["nodes"] if n["op"] == "tp_embedding"}
    assert [lookups[r]["attrs"]["shard"] for r in ranks] == shards
    assert all(n["tp"] for n in lookups.values())
    assert [(lookups[r]["attrs"]["tp_position"], lookups[r]["attrs"]["tp_rank"]) for r in ranks] == [(r, r) for r in ranks]
    assert [lookups[r]["weights"][0]["shape"] for r in ranks][0] == ([5 if tp_size == 2 else 3, 6] if sharding_dim == 0 else [10, 2 if tp_size == 4 else 3]) or tp_size == 1
    if collective:
        (bridge,) = data["collectives"]
        assert bridge["op"] == collective and bridge["group"] == list(ranks)
        assert bridge["nodes"] == [f"r{r}/op:wte/{collective}" for r in ranks]
        ys = {data_node["y"] for data_node in data["nodes"] if data_node["id"] in bridge["nodes"]}
        assert len(ys) == 1, "a bridge's nodes sit on one row across the ranks"
    else:
        assert data["collectives"] == []


@pytest.mark.parametrize("sharding_dim", [0, 1])
def test_embedding_logical_picture(sharding_dim):
    data = model_of(embedding_net(4, sharding_dim), logical=True)
    assert ids(data) == {"in:input_ids", "op:wte", "out:embeddings"}
    (wte,) = [n for n in data["nodes"] if n["id"] == "op:wte"]
    assert wte["op"] == "embedding" and wte["tp"] and wte["attrs"]["tp_size"] == 4 and wte["attrs"]["sharding_dim"] == sharding_dim
    expected = "rank 0: rows [0, 3); rank 1: rows [3, 6); rank 2: rows [6, 9); rank 3: rows [9, 10)" if sharding_dim == 0 else (
        "rank 0: columns [0, 2); rank 1: columns [2, 4); rank 2: columns [4, 5); rank 3: columns [5, 6)")
    assert wte["attrs"]["shard"] == expected
    assert wte["weights"] == [{"name": "wte.weight", "dtype": "float32", "shape": [10, 6], "bytes": 240}]
    assert wte["source"].startswith("embedding_tp.py:")
    assert data["segments"] == [] and data["collectives"] == []


@pytest.mark.parametrize("tp_size,sharding_dim", [(1, 0), (2, 0), (2, 1), (4, 1)])
def test_embedding_engine_picture_matches_its_onnx_files(tmp_path, tp_size, sharding_dim):
    engine = gb.build(embedding_net(tp_size, sharding_dim), tmp_path / "emb")
    data = model_of(engine)
    collective, shards = EMBEDDING_CASES[tp_size, sharding_dim]
    expected_nodes = set()
    for r in range(tp_size):
        model = onnx.load(str(tmp_path / "emb" / f"rank{r}" / "segment0.onnx"), load_external_data=False)
        expected_nodes |= {f"r{r}/op:{node.name}" for node in model.graph.node}
        expected_nodes |= {f"r{r}/in:input_ids", f"r{r}/out:embeddings"} | ({f"r{r}/op:wte/{collective}"} if collective else set())
    assert ids(data) == expected_nodes
    assert data["header"]["kind"] == "engine" and data["header"]["tp_size"] == tp_size and data["header"]["opset"] == 21
    assert sorted(f["path"] for f in data["header"]["files"]) == sorted(f"rank{r}/segment0.onnx" for r in range(tp_size))
    lookups = sorted((n for n in data["nodes"] if n["op"] == "TPEmbedding"), key=lambda n: n["rank"])
    assert [n["attrs"]["shard"] for n in lookups] == shards
    assert [(n["attrs"]["tp_position"], n["attrs"]["tp_rank"], n["attrs"]["tp_size"]) for n in lookups] == [(r, r, tp_size) for r in range(tp_size)]
    assert all(n["source"] and n["source"].startswith("embedding_tp.py:") for n in lookups)
    assert [n["outputs"][0]["shape"] for n in lookups] == [["batch", "seq", 6 if sharding_dim == 0 else int(s.split("[")[1].split(")")[0].split(", ")[1]) - int(s.split("[")[1].split(",")[0])] for s in shards]
    assert len(data["collectives"]) == (1 if collective else 0)


# ------------------------------------------------------------------------------ the GPT decoder
@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_gpt_ranks_picture_has_every_node_edge_segment_and_bridge(tp_size):
    nets = gpt_nets(tp_size)
    data = model_of(nets)
    ranks = rank_networks(nets, verify_each_pass=False)
    expected_nodes, expected_edges = set(), set()
    for r, net in enumerate(ranks):
        producer = {id(v): f"r{r}/in:{v.name}" for v in net.inputs.values()}
        expected_nodes |= {f"r{r}/in:{name}" for name in net.inputs} | {f"r{r}/out:{name}" for name in net.outputs}
        for node in net.nodes:
            expected_nodes.add(f"r{r}/op:{node.name}")
            for value in node.inputs:
                if value is not None and not value.is_constant:
                    expected_edges.add((producer[id(value)], f"r{r}/op:{node.name}", value.name))
            producer.update({id(v): f"r{r}/op:{node.name}" for v in node.outputs})
        expected_edges |= {(producer[id(v)], f"r{r}/out:{name}", v.name) for name, v in net.outputs.items()}
    assert ids(data) == expected_nodes
    assert edge_set(data) == expected_edges
    steps = segment(ranks[0])
    assert len(data["segments"]) == tp_size * sum(1 for s in steps if hasattr(s, "nodes"))
    # one bridge per collective of rank 0: wte, wpe, attention and MLP all-reduces, the LM head's all-gather
    expected_bridges = [] if tp_size == 1 else ["wte/allreduce", "wpe/allreduce", "h.0.attn.dense/allreduce", "h.0.mlp.proj/allreduce", "lm_head/allgather"]
    assert [b["name"] for b in data["collectives"]] == expected_bridges
    for bridge in data["collectives"]:
        assert bridge["nodes"] == [f"r{r}/op:{bridge['name']}" for r in range(tp_size)]
        assert bridge["op"] == bridge["name"].split("/")[-1] and bridge["group"] == list(range(tp_size))
    assert_layered(data)


def assert_layered(data):
    """Edges run downwards; nodes of one column never overlap; segment boxes of one column do not overlap."""
    nodes = {n["id"]: n for n in data["nodes"]}
    for edge in data["edges"]:
        assert nodes[edge["source"]]["y"] < nodes[edge["target"]]["y"], edge
    rows = {}
    for n in data["nodes"]:
        rows.setdefault((n["column"], n["y"]), []).append((n["x"] - n["w"] / 2, n["x"] + n["w"] / 2))
    for spans in rows.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    for rank in {s["rank"] for s in data["segments"]}:
        boxes = sorted(s["box"] for s in data["segments"] if s["rank"] == rank)
        boxes.sort(key=lambda b: b[1])
        assert all(a[1] + a[3] <= b[1] for a, b in zip(boxes, boxes[1:]))


def test_gpt_logical_picture_and_scopes():
    (net,) = gpt_nets(1, n_layer=2)
    data = model_of(net, logical=True)
    assert ids(data) == {f"op:{n.name}" for n in net.nodes} | {"in:input_ids", "out:logits"}
    scopes = {s["name"]: s for s in data["scopes"]}
    attn = {f"op:{n.name}" for n in net.nodes if n.name.startswith(("h.0.attn.", "h.0.attn/"))}
    assert set(scopes["h.0.attn"]["nodes"]) == attn and len(attn) > 10
    assert scopes["h.0.attn"]["parent"] == "h.0" and scopes["h.0"]["parent"] == "h" and scopes["h"]["parent"] is None
    order = [s["name"] for s in data["scopes"]]
    assert order.index("h") < order.index("h.0") < order.index("h.0.attn") < order.index("h.1")
    sources = {n["source"] for n in data["nodes"] if n["id"].startswith("op:")}
    assert all(s and s.startswith("gpt_tp.py:") for s in sources)
    assert_layered(data)


def test_gpt_engine_picture(tmp_path):
    nets = gpt_nets(2)
    engine = gb.build(nets, tmp_path / "gpt")
    data = model_of(tmp_path / "gpt")
    manifest = engine.manifest.to_json()
    expected = set()
    for r, rank in enumerate(manifest["ranks"]):
        for step in rank["steps"]:
            if step["kind"] == "segment":
                model = onnx.load(str(tmp_path / "gpt" / step["file"]), load_external_data=False)
                expected |= {f"r{r}/op:{node.name}" for node in model.graph.node}
            else:
                expected.add(f"r{r}/op:{step['name']}")
        expected |= {f"r{r}/in:input_ids", f"r{r}/out:logits"}
    assert ids(data) == expected
    assert [(b["op"], len(b["nodes"])) for b in data["collectives"]] == [("allreduce", 2)] * 4 + [("allgather", 2)]
    assert [s["file"] for s in data["segments"]] == [s["file"] for rank in manifest["ranks"] for s in rank["steps"] if s["kind"] == "segment"]
    # every tensor a node reads (weights aside) is drawn as an edge from the node or step that wrote it
    into = {(e["target"], e["tensor"]) for e in data["edges"]}
    assert all((n["id"], t["name"]) in into for n in data["nodes"] for t in n["inputs"])
    transpose = next(n for n in data["nodes"] if n["id"] == "r1/op:h.0.attn.qkv/Transpose")
    assert transpose["source"].startswith("gpt_tp.py:") and transpose["weights"][0]["shape"] == [24, 16]
    assert_layered(data)


def test_segment_file_picture(tmp_path):
    gb.build(embedding_net(2, 1), tmp_path / "emb")
    data = model_of(tmp_path / "emb" / "rank1" / "segment0.onnx")
    assert ids(data) == {"in:input_ids", "op:wte", "out:wte/lookup"}
    (lookup,) = [n for n in data["nodes"] if n["op"] == "TPEmbedding"]
    assert lookup["domain"] == "graphbuild" and lookup["weights"][0]["shape"] == [10, 3]
    assert lookup["outputs"] == [{"name": "wte/lookup", "dtype": "float32", "shape": ["batch", "seq", 3]}]
    assert data["header"]["kind"] == "segment"
