"""A researcher opens JupyterLab in a real browser, runs a cell that counts a cohort and
fetches a permitted series through the Workbench; the node's ledger shows the access under
that user."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.governance.store import Governance
from incisive_lab.ledger import Ledger
from incisive_lab.node.store import NodeStore
from tests._support.browser import jupyterlab_login, new_page
from tests.e2e.conftest import password

pytestmark = pytest.mark.timeout(600)


def test_a_researcher_counts_a_cohort_and_fetches_a_series_from_a_notebook(
        workbench: dict[str, Any], browser: Any) -> None:
    with NodeStore.open(Path(workbench["dir"]) / "nodes" / "a") as store:
        # one volume: the largest CT series (the order of studies follows random UIDs, and an
        # MR diffusion series holds two b-values at each position, which a volume refuses)
        # of a patient who did not withdraw consent (the researcher's grant excludes them)
        withdrawn = Governance(store.engine, None).withdrawn("site-a")
        consenting = {st.study_uid: st for st in store.index.studies() if st.patient_id not in withdrawn}
        chosen = max((s for s in store.index.series() if s.modality == "CT" and s.study_uid in consenting),
                     key=lambda s: (s.number_of_instances, s.series_uid))
        study = consenting[chosen.study_uid]
        series = chosen.series_uid
        n_instances = chosen.number_of_instances
    with Ledger.open(Path(workbench["dir"]) / "nodes" / "a", read_only=True) as ledger:
        before = ledger.size
    code = (
        "from incisive_lab import Workbench\\n"
        "wb = Workbench(purpose='ai-development')\\n"
        "c = wb.count({})\\n"
        "print('COUNT', c.total)\\n"
        f"v = wb.fetch_series('hospital-a', '{study.study_uid}', '{series}')\\n"
        "print('VOLUME', v.array.shape[0], v.spacing)"
    )
    with new_page(browser) as page:
        jupyterlab_login(page, workbench["hub_url"], "researcher", password(workbench, "researcher"))
        page.wait_for_url("**/user/researcher/lab**", timeout=120_000)
        page.goto(page.url.split("/lab")[0] + "/lab?reset")
        page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
        # File > New > Notebook, with the sandboxed kernel (the only one offered)
        page.click("text=File")
        page.click("ul[role=menu] >> text=New")
        page.click("ul[role=menu] >> text=Notebook")
        # JupyterLab asks which kernel: the sandboxed one is the only one offered
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for(timeout=60_000)
        # (running kernels of other notebooks are listed as "NAME (id)")
        specs = [k for k in dialog.locator("select option").all_inner_texts()
                 if k != "No Kernel" and not re.search(r"\([0-9a-f]{8}\)$", k)]
        assert specs == ["Python 3 (INCISIVE sandbox)"], specs
        dialog.locator("select").select_option(label="Python 3 (INCISIVE sandbox)")
        dialog.locator("button:has-text('Select')").click()
        # the status bar reads "Python 3 (INCISIVE sandbox) | Idle" once the kernel is up
        page.get_by_text(re.compile(r"INCISIVE sandbox.*Idle")).first.wait_for(timeout=120_000)
        cell = page.locator(".jp-Cell .cm-content").first
        cell.click()
        page.keyboard.insert_text(json.loads(f'"{code}"'))
        page.keyboard.press("Shift+Enter")
        out = page.locator(".jp-OutputArea-output", has_text="VOLUME")
        out.wait_for(timeout=180_000)
        text = page.locator(".jp-OutputArea").first.inner_text()
    assert "COUNT" in text and "VOLUME" in text, text
    assert f"VOLUME {n_instances}" in text
    with Ledger.open(Path(workbench["dir"]) / "nodes" / "a", read_only=True) as ledger:
        events = [e.event for e in ledger.entries(before)]
    mine = [e for e in events if e.actor == "user:researcher"]
    assert any(e.kind == "access" and e.action == "retrieve" and e.outcome.decision == "allowed"
               and study.study_uid in e.resource for e in mine), [(e.kind, e.action, e.resource) for e in mine]
    assert any(e.kind == "query" and e.action == "cohort" for e in mine)
