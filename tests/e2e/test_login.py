"""Login at the hub in a real browser: every role gets in; LoA low and outsiders are refused
with a page saying why; every decision is in the hub's ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from incisive_lab.ledger import Ledger
from tests._support.browser import jupyterlab_login, new_page
from tests.e2e.conftest import password

pytestmark = pytest.mark.timeout(600)

ROLES = ("researcher", "annotator", "steward", "auditor", "admin")


def _hub_events(workbench: dict[str, Any]) -> list[Any]:
    with Ledger.open(Path(workbench["dir"]) / "stack" / "hub" / "ledger", read_only=True) as ledger:
        return [e.event for e in ledger.entries()]


@pytest.mark.parametrize("user", ROLES)
def test_every_role_logs_in_and_reaches_jupyterlab(workbench: dict[str, Any], browser: Any, user: str) -> None:
    with new_page(browser) as page:
        jupyterlab_login(page, workbench["hub_url"], user, password(workbench, user))
        page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)
        page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    logins = [e for e in _hub_events(workbench) if e.kind == "login" and e.outcome.decision == "allowed"]
    assert any(user in e.actor for e in logins)
    spawns = [e for e in _hub_events(workbench) if e.kind == "spawn" and e.action == "spawn"]
    assert any(user in e.actor or user in e.resource for e in spawns)


def test_loa_low_is_refused_with_a_page_saying_why(workbench: dict[str, Any], browser: Any) -> None:
    with new_page(browser) as page:
        jupyterlab_login(page, workbench["hub_url"], "lowloa", password(workbench, "lowloa"))
        text = page.inner_text("body").lower()
        assert "level of assurance" in text and "substantial" in text and "low" in text
        assert "/user/lowloa" not in page.url
    refused = [e for e in _hub_events(workbench) if e.kind == "login" and e.outcome.decision == "denied"]
    assert any("lowloa" in e.actor for e in refused)


def test_a_user_outside_the_allowed_groups_is_refused_with_a_page_saying_why(
        workbench: dict[str, Any], browser: Any) -> None:
    with new_page(browser) as page:
        jupyterlab_login(page, workbench["hub_url"], "outsider", password(workbench, "outsider"))
        text = page.inner_text("body").lower()
        assert "group" in text
        assert "/user/outsider" not in page.url
    refused = [e for e in _hub_events(workbench) if e.kind == "login" and e.outcome.decision == "denied"]
    assert any("outsider" in e.actor for e in refused)
