"""Opening a picture in headless Chromium (Debian's ``chromium``) through Playwright.

Used by ``graphbuild viz --screenshot``, the browser tests and the viewer benchmark. Playwright
drives the system's Chromium (``executable_path``); it never downloads a browser of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from graphbuild.errors import GraphBuildError

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def find_chromium() -> Optional[str]:
    """The Chromium executable: ``$GRAPHBUILD_CHROMIUM``, ``/usr/bin/chromium``, or one on ``PATH``."""
    for candidate in (os.environ.get("GRAPHBUILD_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def launch(executable: Optional[str] = None) -> Iterator[Any]:
    """A headless Chromium browser context with a fresh, temporary user data directory.

    Raises:
        GraphBuildError: Playwright is not installed or no Chromium executable is found.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise GraphBuildError("taking screenshots needs Playwright for Python: pip install playwright (no 'playwright install' needed)") from exc
    executable = executable or find_chromium()
    if executable is None:
        raise GraphBuildError("no Chromium found: install it (Debian: apt-get install chromium) or set GRAPHBUILD_CHROMIUM to its path")
    profile = tempfile.mkdtemp(prefix="graphbuild-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=list(CHROMIUM_ARGS), viewport={"width": 1400, "height": 900}
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def open_page(context: Any, html_path: Union[str, Path], *, fit_all: bool = False, timeout_ms: int = 60_000) -> Any:
    """Opens a picture in a new page and waits until the viewer has drawn it."""
    page = context.new_page()
    url = Path(html_path).resolve().as_uri() + ("#fit" if fit_all else "")
    page.goto(url)
    page.wait_for_function("window.gbViewer && window.gbViewer.ready", timeout=timeout_ms)
    return page


def screenshot(
    html_path: Union[str, Path], png_path: Union[str, Path], *, width: int = 1600, height: int = 1000, fit_all: bool = False, select: Optional[str] = None
) -> Path:
    """Writes a PNG of the picture at ``html_path`` as headless Chromium draws it.

    Args:
        fit_all: the whole network in view (default: its top, at the width of every column).
        select: a node name (or id) whose details panel is open in the screenshot.

    Raises:
        GraphBuildError: no node is named ``select``.
    """
    with launch() as context:
        page = open_page(context, html_path, fit_all=fit_all)
        page.set_viewport_size({"width": width, "height": height})
        if select is not None and page.evaluate("name => window.gbViewer.select(name)", select) is None:
            raise GraphBuildError(f"--select: the picture has no node named '{select}'")
        page.evaluate("window.gbViewer.fit(%s)" % ("true" if fit_all else "false"))
        page.screenshot(path=str(png_path))
    return Path(png_path)
