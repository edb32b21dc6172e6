"""Running engines: schedules, executors, ONNX Runtime sessions, OrtValue conversion, feed checks.

The modules that need ONNX Runtime (``executor``, ``session``) load on first use, so the numpy
reference interpreter can share ``feeds`` without importing ONNX Runtime.
"""

from typing import Any

from graphbuild.runtime.feeds import validate_feeds
from graphbuild.runtime.protocol import Executor, ExecutorRequest
from graphbuild.runtime.schedule import CollectiveStep, RankSchedule, Schedule, SegmentStep

__all__ = ["CollectiveStep", "Executor", "ExecutorRequest", "LocalExecutor", "RankSchedule", "Schedule", "SegmentStep", "default_providers", "validate_feeds"]


def __getattr__(name: str) -> Any:
    if name == "LocalExecutor":
        from graphbuild.runtime.executor import LocalExecutor

        return LocalExecutor
    if name == "default_providers":
        from graphbuild.runtime.session import default_providers

        return default_providers
    raise AttributeError(f"module 'graphbuild.runtime' has no attribute '{name}'")
