"""Kernels crash and restart; users cannot see each other's files."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest

from tests._support.hub_session import HubSession
from tests.e2e.conftest import password

pytestmark = pytest.mark.timeout(600)


def test_a_crashed_kernel_restarts_and_works_again(researcher: HubSession) -> None:
    kid = researcher.start_kernel()
    researcher.kernel_info(kid)
    assert researcher.execute(kid, "x = 41; print(x + 1)").stdout.strip() == "42"
    with contextlib.suppress(Exception):  # the channel may close with the kernel
        researcher.execute(kid, "import os; os._exit(1)", timeout=20)
    deadline = time.monotonic() + 60
    while True:  # the server notices the dead kernel and restarts it
        model = researcher.api("GET", f"/api/kernels/{kid}").json()
        if model.get("execution_state") in ("idle", "starting", "busy"):
            out = None
            with contextlib.suppress(Exception):
                out = researcher.execute(kid, "print('x' in dir())", timeout=20)
            if out is not None and out.stdout.strip():
                break
        assert time.monotonic() < deadline, model
        time.sleep(0.5)
    assert out is not None and out.stdout.strip() == "False"  # a fresh interpreter
    # an explicit restart works too
    assert researcher.api("POST", f"/api/kernels/{kid}/restart").status_code == 200
    researcher.kernel_info(kid)
    assert researcher.execute(kid, "print(6 * 7)").stdout.strip() == "42"


def test_a_second_user_cannot_see_the_first_users_files(workbench: dict[str, Any], researcher: HubSession) -> None:
    kid = researcher.start_kernel()
    researcher.execute(kid, "open('/workspace/private-notes.txt', 'w').write('researcher only')")
    assert researcher.api("GET", "/api/contents/private-notes.txt").status_code == 200
    with HubSession(workbench["hub_url"], "annotator", password(workbench, "annotator")) as other:
        other.login()
        other.start_server()
        assert other.api("GET", "/api/contents/private-notes.txt").status_code == 404
        # the annotator's own session cannot reach the researcher's server either
        assert other.http.get(f"{workbench['hub_url'].rstrip('/')}/user/researcher/api/contents",
                              follow_redirects=True).status_code in (403, 404) or \
            "private-notes" not in other.http.get(f"{workbench['hub_url'].rstrip('/')}/user/researcher/api/contents",
                                                  follow_redirects=True).text
        okid = other.start_kernel()
        where = ("/workspace", "/run", "/tmp", "/home", "/work", "/root", "/srv", "/var")
        out = other.execute(okid, f"import glob; print(sorted(p for base in {where!r} for p in "
                                  "glob.glob(base + '/**/private-notes.txt', recursive=True)))", timeout=120)
        assert out.stdout.strip() == "[]", out.text
        other.stop_server()
