"""The registry owns tensor parallelism: partition rules, claims and the checks that need them."""

from __future__ import annotations

import numpy as np
import pytest

import graphbuild as gb
from graphbuild import functional as F
from graphbuild.errors import GraphConstructionError
from graphbuild.ops.registry import OpDef, TensorType, get_op, register


def _same(node):
    x = node.inputs[0]
    return [TensorType(x.dtype, x.shape)]


def test_a_collective_without_a_partition_rule_is_refused():
    with pytest.raises(GraphConstructionError, match=r"op 'test_broadcast' is a collective without a partition rule"):
        register(OpDef("test_broadcast", infer=_same, collective=True))
    with pytest.raises(GraphConstructionError, match="unknown op 'test_broadcast'"):
        get_op("test_broadcast")


def test_every_collective_of_the_registry_has_a_rule():
    from graphbuild.ops import registered_ops

    collectives = [op for op in registered_ops().values() if op.collective]
    assert {op.name for op in collectives} >= {"allreduce", "allgather"}
    assert all(op.partition is not None for op in collectives)


def test_what_embeddings_claim():
    net = gb.Network("claims")
    with net:
        ids = net.add_input("ids", "int64", ("n",))
        table = gb.constant(np.zeros((6, 4), np.float32), name="t")
        F.embedding(ids, table, name="replicated")
        F.embedding(ids, table, tp_size=2, tp_group=[3, 5], name="logical")
        F.embedding(ids, gb.constant(np.zeros((3, 4), np.float32)), tp_size=2, tp_group=[3, 5], tp_rank=5, vocab_size=6, name="local")
    opdef = get_op("embedding")
    claims = [opdef.claim(node) for node in net.nodes]
    assert claims[0] is None, "a tp_size=1 embedding is replicated and claims nothing"
    assert (claims[1].tp_size, claims[1].group, claims[1].position, claims[1].logical) == (2, (3, 5), None, True)
    assert (claims[2].tp_size, claims[2].group, claims[2].position, claims[2].logical) == (2, (3, 5), 1, False)
    assert [opdef.exchanges(node) for node in net.nodes] == [False, False, True]


def test_every_module_of_the_ops_package_is_imported():
    import sys
    from pathlib import Path

    import graphbuild.ops

    modules = {p.stem for p in Path(graphbuild.ops.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert modules and all(f"graphbuild.ops.{m}" in sys.modules for m in modules)
