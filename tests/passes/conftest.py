"""Fixtures of the pass tests. Counting work instead of timing it: how many lines (and C calls) a step executes.

A linear step executes about twice the lines on a network twice as large; a step that walks the
network once per node executes four times as many. The count does not depend on the machine or its
load, so tests can assert it. (Work hidden inside one C call, such as ``list.remove``, is not seen.)
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import pytest


def calls(step: Callable[[], Any]) -> int:
    """The work ``step()`` does: Python lines executed (loop iterations included) plus C functions
    called (profiler ``c_call`` events)."""
    count = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        count += 1
        return local

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event == "c_call":
            count += 1

    def trace(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_lines = True
        return local

    previous_trace, previous_profile = sys.gettrace(), sys.getprofile()
    sys.settrace(trace)
    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.settrace(previous_trace)
        sys.setprofile(previous_profile)
    return count


def doubling_ratio(step_for: Callable[[int], Callable[[], Any]], size: int) -> float:
    """``calls`` on a problem of ``2 * size`` over ``calls`` on one of ``size``; ``step_for(n)``
    prepares the problem (not counted) and returns the step."""
    small = calls(step_for(size))
    return calls(step_for(2 * size)) / small


@pytest.fixture(name="doubling_ratio")
def doubling_ratio_fixture() -> Callable[[Callable[[int], Callable[[], Any]], int], float]:
    """``doubling_ratio`` (see above), for tests that check a step is linear."""
    return doubling_ratio
