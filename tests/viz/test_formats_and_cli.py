"""SVG, DOT and JSON outputs, ``net.to_networkx()`` through networkx's own writers, and the
``graphbuild viz`` and ``graphbuild inspect`` (segment, ``--viz``, collapsed ranks) commands."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import networkx as nx
import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.tools.cli import main
from graphbuild.viz import VisualizationError

from .conftest import ROOT, embedding_net, gpt_nets

EXAMPLE = ROOT / "examples" / "embedding_tp.py"
SMALL = ["--set", "vocab_size=10", "--set", "hidden_size=6"]
SVG = "{http://www.w3.org/2000/svg}"


def test_svg_draws_every_node_and_both_bridge_styles(tmp_path):
    nets = gpt_nets(2)
    gb.visualize(nets, tmp_path / "g.svg")
    data = json.loads(gb.visualize(nets, tmp_path / "g.json").read_text())
    root = ET.parse(tmp_path / "g.svg").getroot()
    titles = [g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g")]
    assert sorted(titles) == sorted(f"{n['op']} {n['name']}" for n in data["nodes"])
    lines = list(root.iter(f"{SVG}line"))
    assert len(lines) == 5
    assert sum(1 for line in lines if line.get("stroke-dasharray")) == 1  # the all-gather; all-reduces are solid
    assert len(list(root.iter(f"{SVG}path"))) == len(data["edges"])


def test_dot_has_rank_and_segment_clusters_and_one_node_per_bridge(tmp_path):
    text = gb.visualize(embedding_net(2, 1), tmp_path / "g.gv").read_text()
    assert text.startswith('digraph "embedding_tp" {')
    assert 'subgraph "cluster_rank0"' in text and 'subgraph "cluster_rank1"' in text
    assert 'subgraph "cluster_r1/segment0"' in text
    assert text.count("shape=hexagon") == 1 and "style=\"filled,dashed\"" in text
    # both ranks' lookups feed the one all-gather node, which feeds both ranks' outputs
    assert '"r0/op:wte/lookup" -> "c0"' in text and '"r1/op:wte/lookup" -> "c0"' in text
    assert '"c0" -> "r0/out:embeddings"' in text and '"c0" -> "r1/out:embeddings"' in text
    assert text.rstrip().endswith("}") and text.count("{") == text.count("}")


def test_html_is_self_contained(tmp_path):
    html = gb.visualize(embedding_net(2, 0), tmp_path / "g.html").read_text()
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    payload = html.split('<script type="application/json" id="graph-data">')[1].split("</script>")[0]
    assert json.loads(payload)["format"] == "graphbuild-viz"


def test_names_cannot_break_out_of_the_page(tmp_path):
    net = gb.Network("</script><b>x</b>")
    with net:
        x = net.add_input("x", "float32", ("n", 4))
        net.mark_output(F.relu(x), "y</script>")
    html = gb.visualize(net, tmp_path / "g.html", logical=True).read_text()
    assert html.count("</script>") == 2  # the data's and the viewer's own
    assert "<b>x</b>" not in html


def test_format_errors(tmp_path):
    with pytest.raises(VisualizationError, match="suffix"):
        gb.visualize(embedding_net(1, 0), tmp_path / "g.png")
    with pytest.raises(VisualizationError, match="unknown format 'pdf'"):
        gb.visualize(embedding_net(1, 0), tmp_path / "g.x", format="pdf")
    with pytest.raises(VisualizationError, match="neither an engine directory nor a segment"):
        gb.visualize(tmp_path / "absent", tmp_path / "g.html")
    with pytest.raises(VisualizationError, match="cannot visualize a int"):
        gb.visualize(3, tmp_path / "g.html")


def test_to_networkx_writes_graphml_and_gexf(tmp_path):
    net = embedding_net(2, 1)
    with net:
        y = F.relu(net.outputs["embeddings"].tensor())
        net.mark_output(y, "relu")
        net.mark_output(y, "again")
    graph = net.to_networkx()
    nx.write_graphml(graph, tmp_path / "g.graphml")
    nx.write_gexf(graph, tmp_path / "g.gexf")
    back = nx.read_graphml(tmp_path / "g.graphml")
    assert back.nodes["op:wte"]["attr.tp_size"] == 2 and back.nodes["op:wte"]["attr.sharding_dim"] == 1
    assert back.nodes["op:wte"]["attr.tp_group"] == "[0, 1]"
    assert back.nodes[f"%{y.name}"]["outputs"] == "relu,again"
    assert sorted(back.nodes) == sorted(graph.nodes) and back.number_of_edges() == graph.number_of_edges()
    gexf = nx.read_gexf(tmp_path / "g.gexf")
    assert gexf.number_of_nodes() == graph.number_of_nodes()


def test_to_networkx_mixed_attribute_types_become_text(tmp_path):
    net = gb.Network("m")
    with net:
        x = net.add_input("x", "float32", (2,))
        net.mark_output(F.softmax(F.softmax(x, axis=0), axis=0), "y")
    net.nodes[1].attrs["axis"] = "0"  # a name whose values differ in type between nodes
    graph = net.to_networkx()
    assert {graph.nodes[f"op:{n.name}"]["attr.axis"] for n in net.nodes} == {"0"}
    nx.write_graphml(graph, tmp_path / "m.graphml")


# ----------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("viz") / "emb"
    assert main(["build", f"{EXAMPLE}:make_network", "-o", str(path), "--tp-size", "4", *SMALL]) == 0
    return path


def test_viz_command_on_engine_segment_and_entry_point(engine, tmp_path, capsys):
    assert main(["viz", str(engine), "-o", str(tmp_path / "e.json")]) == 0
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["header"]["kind"] == "engine" and len(data["ranks"]) == 4 and len(data["collectives"]) == 1
    assert main(["viz", str(engine / "rank3" / "segment0.onnx"), "-o", str(tmp_path / "s.svg")]) == 0
    assert ET.parse(tmp_path / "s.svg").getroot().tag == f"{SVG}svg"
    assert main(["viz", f"{EXAMPLE}:make_network", "--tp-size", "2", "--set", "sharding_dim=1", *SMALL, "-o", str(tmp_path / "r.json")]) == 0
    ranks = json.loads((tmp_path / "r.json").read_text())
    assert ranks["header"]["kind"] == "ranks" and [c["op"] for c in ranks["collectives"]] == ["allgather"]
    assert main(["viz", f"{EXAMPLE}:make_network", "--logical", *SMALL, "--format", "dot", "-o", str(tmp_path / "l.txt")]) == 0
    assert '"op:wte"' in (tmp_path / "l.txt").read_text()
    assert "wrote" in capsys.readouterr().out


def test_viz_command_errors(engine, tmp_path, capsys):
    assert main(["viz", str(engine), "--tp-size", "2", "-o", str(tmp_path / "e.html")]) == 1
    assert "apply to network entry points" in capsys.readouterr().err
    assert main(["viz", str(engine), "-o", str(tmp_path / "e.svg"), "--screenshot", str(tmp_path / "e.png")]) == 1
    assert "--screenshot draws the HTML picture" in capsys.readouterr().err
    assert main(["viz", str(tmp_path / "nothing.onnx"), "-o", str(tmp_path / "e.html")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01junk")
    assert main(["viz", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "e.html")]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_inspect_segment_viz_and_collapsed_ranks(engine, tmp_path, capsys):
    assert main(["inspect", str(engine), "--viz", str(tmp_path / "e.dot")]) == 0
    out = capsys.readouterr().out
    assert "ranks 0-3 steps (the same up to the rank index; rank 0's shown)" in out
    assert "rank 1 steps" not in out and f"picture: {tmp_path / 'e.dot'}" in out
    assert (tmp_path / "e.dot").read_text().startswith("digraph")
    assert main(["inspect", str(engine / "rank2" / "segment0.onnx"), "--viz", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "custom ops  graphbuild::TPEmbedding" in out and "nodes       1: TPEmbedding:1" in out
    assert "weights     1 initializer(s), 72 B" in out  # 3 rows x 6 float32 columns
    assert "(batch, seq, 6)" in out and "int64" in out
    assert json.loads((tmp_path / "s.json").read_text())["header"]["kind"] == "segment"


def test_inspect_lists_ranks_whose_steps_differ(engine):
    from graphbuild.engine import Manifest
    from graphbuild.tools.inspect_cmd import describe

    manifest = json.loads((engine / "config.json").read_text())
    manifest["ranks"][2]["steps"][0]["onnx_nodes"] = 7  # rank 2 differs beyond its index
    text = describe(Manifest.from_json(manifest), str(engine), [])
    assert "ranks 0-1, 3 steps" not in text
    assert "ranks 0, 1, 3 steps (the same up to the rank index; rank 0's shown)" in text
    assert "rank 2 steps" in text and "7 ONNX node(s)" in text
