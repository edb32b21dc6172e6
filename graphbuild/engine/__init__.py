"""Engine directories: the manifest format, atomic writing, loading and running."""

from graphbuild.engine.engine import Engine
from graphbuild.engine.files import PinnedEngineDir, read_manifest, verify_files
from graphbuild.engine.manifest import FORMAT, FORMAT_VERSION, MANIFEST, CollectiveStep, FileEntry, Manifest, RankPlan, SegmentStep, TensorSpec
from graphbuild.engine.writer import write_engine

__all__ = [
    "CollectiveStep",
    "Engine",
    "FORMAT",
    "FORMAT_VERSION",
    "FileEntry",
    "MANIFEST",
    "Manifest",
    "PinnedEngineDir",
    "RankPlan",
    "SegmentStep",
    "TensorSpec",
    "read_manifest",
    "verify_files",
    "write_engine",
]
