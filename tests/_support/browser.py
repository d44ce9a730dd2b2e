"""A real browser for the end-to-end tests: Playwright driving Debian's chromium.

Playwright's own browser downloads are not used (no internet here): Debian's
``/usr/bin/chromium`` runs headless with the flags measured to work on these machines
(DESIGN §7). A missing chromium is an error naming the apt-get line, never a skip.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_ARGS", "chromium", "jupyterlab_login", "new_page"]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _executable() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    raise RuntimeError("Debian's chromium is missing: run `sudo apt-get install -y --no-install-recommends chromium` "
                       "(or `make install` as root)")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (a Playwright ``Browser``) until the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_executable(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def new_page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (its own cookies), closed when the block ends."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def jupyterlab_login(page: Any, hub_url: str, username: str, password: str) -> Any:
    """Log in at the hub through the identity provider's login form; returns the final response
    page (JupyterLab once the server runs, or the hub's refusal page)."""
    page.goto(hub_url.rstrip("/") + "/hub/login")
    # The hub's login page: a button/link to the OIDC provider (or an automatic redirect).
    if "/interaction/" not in page.url:
        link = page.locator("a[href*='oauth_login'], a:has-text('Sign in')").first
        link.click()
    page.wait_for_url("**/interaction/**")
    page.fill("input[name=login]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    return page
