"""Engine directories: the manifest format, atomic writing, loading and running."""

from graphbuild.engine.engine import Engine
from graphbuild.engine.manifest import FORMAT, FORMAT_VERSION, MANIFEST, TensorSpec, read_manifest, verify_files
from graphbuild.engine.writer import write_engine

__all__ = ["Engine", "FORMAT", "FORMAT_VERSION", "MANIFEST", "TensorSpec", "read_manifest", "verify_files", "write_engine"]
