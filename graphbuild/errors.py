"""The one exception hierarchy of graphbuild.

Every error graphbuild raises, including errors ONNX Runtime reports while an engine runs, is a
``GraphBuildError``. Messages say what was wrong, where (op, node, file, rank, position) and how to
fix it; the node's creation site in user code is appended when known.
"""

from __future__ import annotations


class GraphBuildError(Exception):
    """Base class of every error graphbuild raises."""


class NetworkContextError(GraphBuildError):
    """An operation needed a current network (``with net:``) and none was active."""


class GraphConstructionError(GraphBuildError):
    """An op was called with arguments that cannot form a valid node."""


class ShapeInferenceError(GraphConstructionError):
    """An op's shape or dtype rule rejected its inputs."""


class VerificationError(GraphBuildError):
    """The network violates an IR invariant (ownership, order, names, use lists)."""


class PassError(GraphBuildError):
    """A pass failed; the message names it and the passes that ran before it."""


class PartitionError(GraphBuildError):
    """The tensor-parallel partition could not split the network as asked."""


class ExportError(GraphBuildError):
    """ONNX export failed or produced an invalid model."""


class EngineError(GraphBuildError):
    """An engine directory is missing, corrupt, tampered with, or of another format version."""


class CheckpointError(GraphBuildError):
    """A checkpoint is missing a parameter, has an unexpected or wrongly shaped one, or cannot be read."""


class PluginNotFoundError(GraphBuildError):
    """The custom-op library is not installed with the package."""


class RuntimeVersionError(GraphBuildError):
    """The installed ONNX Runtime is older than graphbuild supports."""


class InputError(GraphBuildError):
    """Feeds given to an engine or the reference interpreter do not match its inputs."""


class OutOfRangeIdError(InputError):
    """An embedding id lies outside the global vocabulary ``[0, vocab_size)``."""


class ExecutionError(GraphBuildError):
    """ONNX Runtime or a collective failed while an engine ran."""


class ConfigurationError(GraphBuildError):
    """An environment variable or a setting argument (providers, threads, executor) has a value
    graphbuild does not accept; the message names it and the accepted values."""
