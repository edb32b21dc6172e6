"""graphbuild's pass pipeline (the ``passes/`` folder, imported as ``graphbuild.passes``).

Order, from a user's network to engine files:

1. ``VerifyPass`` (``verify.py``): IR invariants: ownership, topological order, names, use lists.
2. ``ShapeInferencePass`` (``infer_shapes.py``): re-runs every op's shape/dtype rule.
3. ``ConstantFoldingPass`` (``fold_constants.py``): evaluates all-constant subgraphs.
4. ``DeadCodeEliminationPass`` (``eliminate_dead_code.py``): drops what no output needs.
5. ``partition`` / ``partition_ranks`` (``partition.py``): one network per tensor-parallel rank.
6. ``segment`` (``segment.py``): cuts each rank's network at its collectives.
7. ONNX export (``export_onnx.py``): lowers each segment to an ONNX model.

Steps 1-4 are ``Pass`` objects run by a ``PassManager`` (``default_pipeline``); after the partition
each rank gets ``rank_cleanup`` (dead-code elimination, ``ConstantOutputsPass``); steps 5-7 produce
several networks or non-network results, so they are plain functions. ``gb.build`` runs the whole
flow as one named list of ``Phases`` (see ``graphbuild.build.PHASES``). Passes edit the network in
place (``Pass.in_place``): copy it first (``net.copy()``) to keep the original.
"""

from graphbuild.passes.eliminate_dead_code import DeadCodeEliminationPass
from graphbuild.passes.fold_constants import ConstantFoldingPass
from graphbuild.passes.infer_shapes import ShapeInferencePass
from graphbuild.passes.fix_outputs import ConstantOutputsPass
from graphbuild.passes.infra import Pass, Phase, Phases, PassManager, PassResult
from graphbuild.passes.partition import infer_tp_size, partition, partition_ranks, rank_order
from graphbuild.passes.segment import CollectiveStep, Segment, Step, check_same_schedule, segment
from graphbuild.passes.verify import VerifyPass, verify_network


def default_pipeline(*, verify_each: bool = False) -> PassManager:
    """verify → infer shapes → fold constants → eliminate dead code.

    One run suffices: folding evaluates whole constant subgraphs in one sweep and dead-code
    elimination exposes nothing new to fold, so no fixed-point iteration is needed.

    Args:
        verify_each: run the verifier after every pass (tests turn this on).
    """
    return PassManager(
        [VerifyPass(), ShapeInferencePass(), ConstantFoldingPass(), DeadCodeEliminationPass()],
        verify_each=verify_each,
        name="optimize",
    )


def rank_cleanup() -> PassManager:
    """What every rank network gets after the partition: dead-code elimination (what the rank's
    outputs do not need, collectives kept), then constant outputs routed through ``identity``."""
    return PassManager([DeadCodeEliminationPass(), ConstantOutputsPass()], name="rank_cleanup")


__all__ = [
    "CollectiveStep",
    "ConstantFoldingPass",
    "ConstantOutputsPass",
    "DeadCodeEliminationPass",
    "Pass",
    "PassManager",
    "PassResult",
    "Phase",
    "Phases",
    "Segment",
    "ShapeInferencePass",
    "Step",
    "VerifyPass",
    "check_same_schedule",
    "default_pipeline",
    "rank_cleanup",
    "infer_tp_size",
    "partition",
    "partition_ranks",
    "rank_order",
    "segment",
    "verify_network",
]
