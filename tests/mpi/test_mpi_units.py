"""Pieces of the MPI executor: with stand-in communicators in this process, how ranks agree on
errors, how collective headers are matched, the group-order sum, launch detection; and the
host-staged collectives of CUDA tensors, in real processes with CPU tensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from graphbuild.errors import ExecutionError, InputError, OutOfRangeIdError
from graphbuild.runtime.mpi_collectives import Header, agreed_shape, exchange_headers, ordered_sum
from graphbuild.runtime.mpi_env import MPIError, PeerFailed, Watchdog, agree, describe_error, launched_by_mpi
from graphbuild.runtime.schedule import CollectiveStep


class FakeComm:
    """A communicator whose ``allgather`` returns what the other ranks are scripted to send."""

    def __init__(self, others: dict[int, object], rank: int = 0) -> None:
        self.others, self.rank = others, rank

    def allgather(self, mine: object) -> list:
        return [mine if r == self.rank else self.others[r] for r in range(len(self.others) + 1)]

    def Get_size(self) -> int:
        return len(self.others) + 1


WATCHDOG = Watchdog(mpi=None, rank=0, timeout=60)
STEP = CollectiveStep("allreduce", "wte/allreduce", 3, (0, 1, 2), "wte/lookup", "wte")


def test_agree_raises_the_lowest_failing_ranks_error_with_its_class_on_every_rank():
    comm = FakeComm({1: describe_error(OutOfRangeIdError("embedding 'wte': id 9 ...")), 2: describe_error(InputError("bad"))})
    with pytest.raises(OutOfRangeIdError, match=r"^rank 1: embedding 'wte': id 9 \.\.\.$") as caught:
        agree(comm, None, WATCHDOG, "call")
    assert caught.value.shared_by_ranks
    agree(FakeComm({1: None, 2: None}), None, WATCHDOG, "call")  # nobody failed: returns
    same = describe_error(MPIError("world size"))
    with pytest.raises(MPIError, match=r"^world size$"):  # every rank said the same: no prefix
        agree(FakeComm({1: same}), MPIError("world size"), WATCHDOG, "load")
    with pytest.raises(ExecutionError, match=r"^rank 1: unexpected KeyError: 'x'$"):
        agree(FakeComm({1: describe_error(KeyError("x"))}), PeerFailed(), WATCHDOG, "call")


def test_headers_name_the_collective_and_ranks_on_any_mismatch():
    mine = ("float32", (2, 3))
    ok = Header("allreduce", 3, "float32", (2, 3), False)
    assert exchange_headers(FakeComm({1: ok, 2: ok}), STEP, (0, 1, 2), mine, WATCHDOG) == [(2, 3)] * 3
    order = Header("allgather", 4, "float32", (2, 3), False)
    with pytest.raises(MPIError, match=r"allreduce 'wte/allreduce' \(instance_id 3, group \[0, 1, 2\]\): ranks reached different collectives: rank 0 is at allreduce instance 3, rank 2 at allgather instance 4"):
        exchange_headers(FakeComm({1: ok, 2: order}), STEP, (0, 1, 2), mine, WATCHDOG)
    dtype = Header("allreduce", 3, "float16", (2, 3), False)
    with pytest.raises(MPIError, match=r"rank 0 contributes float32, rank 1 float16"):
        exchange_headers(FakeComm({1: dtype, 2: ok}), STEP, (0, 1, 2), mine, WATCHDOG)
    with pytest.raises(PeerFailed):
        exchange_headers(FakeComm({1: Header("allreduce", 3, "", (), True), 2: ok}), STEP, (0, 1, 2), mine, WATCHDOG)
    with pytest.raises(MPIError, match=r"ranks contributed different shapes .*\(group \[0, 1, 2\]: rank 0 \[2, 3\], rank 1 \[2, 4\], rank 2 \[2, 3\]\)"):
        agreed_shape(STEP, (0, 1, 2), [(2, 3), (2, 4), (2, 3)])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int64])
def test_ordered_sum_adds_in_group_order_rounding_after_every_addition(dtype, rng):
    parts = (rng.standard_normal((4, 257)) * np.array([[1e4], [1e-3], [-1e4], [7.0]])).astype(dtype)
    out = np.empty(parts.shape[1:], dtype)
    ordered_sum(parts, out)
    expected = parts[0]
    for part in parts[1:]:
        expected = (expected.astype(np.float64) + part.astype(np.float64)).astype(dtype) if dtype != np.int64 else expected + part
    np.testing.assert_array_equal(out, expected)  # float32 + float32 is exact in float64, rounded once


def test_ordered_sum_of_bools_is_a_logical_or():
    parts = np.array([[True, False, False], [False, False, True], [False, False, False]])
    out = np.empty(3, bool)
    ordered_sum(parts, out)
    assert out.tolist() == [True, False, True]


@pytest.mark.parametrize("env, expected", [({}, False), ({"PMI_RANK": "0", "PMI_SIZE": "2"}, True), ({"OMPI_COMM_WORLD_SIZE": "4"}, True), ({"PMIX_RANK": "1"}, True), ({"PATH": "/bin"}, False)])
def test_launch_detection(env, expected):
    assert launched_by_mpi(env) is expected


def test_staged_collectives_match_numpy(run_mpi, spec, tmp_path):
    """The path CUDA tensors take without NCCL (device -> host, MPI, host -> device), driven with
    CPU tensors in 3 processes: a 3-rank all-reduce and an uneven all-gather along axis 1."""
    done = run_mpi(3, ["worker", "staged", spec({"out": str(tmp_path / "staged")})])
    assert done.returncode == 0, done.stderr
    assert "copies CUDA tensors to host memory for every collective" in done.stderr
    same = [np.random.default_rng(r).standard_normal((3, 4)).astype(np.float32) for r in range(3)]
    blocks = [np.random.default_rng(r).standard_normal((2, r + 2)).astype(np.float32) for r in range(3)]
    for rank in range(3):
        with np.load(tmp_path / f"staged.rank{rank}.npz") as saved:
            np.testing.assert_array_equal(saved["allreduce"], (same[0] + same[1]) + same[2])
            np.testing.assert_array_equal(saved["allgather"], np.concatenate(blocks, axis=1))
