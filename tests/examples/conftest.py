"""Loading the example scripts (and the numpy references beside these tests) as modules, and the
documented sessions of the examples (``tests/docs/doc_blocks.py``) for the tests that mirror them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def load_script() -> Iterator[Callable[[Path], object]]:
    """``load_script(path)``: the file imported as a module named after it (registered in
    ``sys.modules`` so dataclasses and pickling work, removed at the end of the session)."""
    names = []

    def load(path: Path) -> object:
        name = f"graphbuild_tests_{Path(path).stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        names.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def doc_blocks(load_script) -> object:
    """``tests/docs/doc_blocks.py``: ``doc_blocks.find_session(page, command)`` and ``doc_blocks.mismatch``."""
    return load_script(ROOT / "tests" / "docs" / "doc_blocks.py")
