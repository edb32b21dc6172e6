"""Running engines: schedules, executors, ONNX Runtime sessions, OrtValue conversion, feed checks."""

from graphbuild.runtime.executor import LocalExecutor
from graphbuild.runtime.feeds import validate_feeds
from graphbuild.runtime.protocol import Executor, ExecutorRequest
from graphbuild.runtime.schedule import CollectiveStep, RankPlan, Schedule, SegmentStep
from graphbuild.runtime.session import default_providers

__all__ = ["CollectiveStep", "Executor", "ExecutorRequest", "LocalExecutor", "RankPlan", "Schedule", "SegmentStep", "default_providers", "validate_feeds"]
