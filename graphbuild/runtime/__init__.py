"""Running engines: ONNX Runtime sessions, OrtValue conversion, feed checks, the local executor."""

from graphbuild.runtime.executor import LocalExecutor
from graphbuild.runtime.feeds import validate_feeds
from graphbuild.runtime.session import default_providers

__all__ = ["LocalExecutor", "default_providers", "validate_feeds"]
