"""Every download path of a real, authenticated server is refused; ordinary work still works.

The user is logged in (the server's token) throughout: these are refusals of what the data
terms forbid, not of anonymous access (``test_every_handler_authenticated`` covers that).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import nbformat
import pytest

from incisive_lab_server.refusal import REFUSAL
from tests.extensions._lab import SECRET, Lab, dicom_like, tree

REFUSED = [
    ("GET", "/files/data/scan.dcm"),
    ("GET", "/files/data/cohort.csv"),
    ("GET", "/files/data/scan.dcm?download=1"),
    ("GET", "/files/data/cohort.csv?download=true"),
    ("HEAD", "/files/data/cohort.csv"),
    ("GET", "/files/analysis.ipynb"),
    ("GET", "/api/contents/data/scan.dcm"),
    ("GET", "/api/contents/data/scan.dcm?content=1"),
    ("GET", "/api/contents/data/scan.dcm?content=1&type=file"),
    ("GET", "/api/contents/data/scan.dcm?format=base64"),
    ("GET", "/api/contents/data/scan.dcm?format=text"),
    ("GET", "/api/contents/data/scan.dcm?type=notebook"),
    ("GET", "/api/contents/data/cohort.csv?format=base64"),
    ("GET", "/api/contents/data/cohort.csv?format=base64&type=file"),
    ("GET", "/api/contents/analysis.ipynb?format=base64&type=file"),
    ("GET", "/nbconvert/html/analysis.ipynb"),
    ("GET", "/nbconvert/html/analysis.ipynb?download=true"),
    ("GET", "/nbconvert/script/analysis.ipynb?download=true"),
    ("GET", "/nbconvert/notebook/analysis.ipynb?download=true"),
    ("GET", "/nbconvert/pdf/analysis.ipynb"),
    ("POST", "/nbconvert/html"),
    ("GET", "/api/nbconvert"),
    ("GET", "/view/data/scan.dcm"),
    ("GET", "/view/data/cohort.csv"),
    ("GET", "/view/analysis.ipynb"),
    ("GET", "/terminals/websocket/1"),
    ("GET", "/api/terminals"),
    ("POST", "/api/terminals"),
    ("GET", "/api/terminals/1"),
    ("DELETE", "/api/terminals/1"),
]


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_download_path_refused_for_a_logged_in_user(lab: Lab, method: str, path: str) -> None:
    with lab.client() as client:
        nb = nbformat.writes(nbformat.read(lab.workspace / "analysis.ipynb", as_version=4))
        body = nb.encode() if method == "POST" else None
        r = client.request(method, path, content=body)
    assert r.status_code == 403, (path, r.status_code, r.text[:300])
    assert SECRET not in r.text
    assert base64.b64encode(dicom_like()[128:200]).decode() not in r.text
    if method != "HEAD":
        # the sentence says why; HTML pages escape it, so compare its first words
        assert "the data terms forbid downloading data" in r.text, r.text[:500]
        assert "airlock" in r.text


def test_refusals_are_logged_with_the_path(lab: Lab) -> None:
    with lab.client() as client:
        assert client.get("/files/data/cohort.csv?download=1").status_code == 403
        assert client.get("/api/contents/data/scan.dcm").status_code == 403
    log = lab.log_text()
    assert "refused GET /files/data/cohort.csv?download=1" in log
    assert "refused the contents of" in log and "scan.dcm" in log


def test_api_refusal_is_json_with_the_sentence(lab: Lab) -> None:
    with lab.client() as client:
        for path in ("/api/contents/data/scan.dcm", "/api/nbconvert", "/api/terminals"):
            r = client.get(path)
            assert r.status_code == 403
            assert r.json() == {"message": REFUSAL, "reason": "Download refused"}


def test_terminals_are_not_available(lab: Lab) -> None:
    with lab.client() as client:
        page = client.get("/lab")
    assert page.status_code == 200
    assert '"terminalsAvailable": false' in page.text
    assert "terminal_manager" not in page.text


def test_binary_metadata_without_content_is_still_listed(lab: Lab) -> None:
    with lab.client() as client:
        listing = client.get("/api/contents/data")
        meta = client.get("/api/contents/data/scan.dcm", params={"content": "0"})
    assert listing.status_code == 200
    assert {e["name"] for e in listing.json()["content"]} >= {"scan.dcm", "cohort.csv"}
    assert meta.status_code == 200
    assert meta.json()["content"] is None
    assert meta.json()["size"] == len(dicom_like())


def test_text_files_read_and_edit(lab: Lab) -> None:
    with lab.client() as client:
        r = client.get("/api/contents/data/cohort.csv")
        assert r.status_code == 200
        assert r.json()["format"] == "text"
        assert SECRET in r.json()["content"]  # text stays readable: the editor needs it
        new = "patient,age\nP1,40\n"
        put = client.put("/api/contents/data/edited.csv",
                         json={"type": "file", "format": "text", "content": new})
        assert put.status_code in (200, 201), put.text
        assert client.get("/api/contents/data/edited.csv").json()["content"] == new
        assert (lab.workspace / "data" / "edited.csv").read_text() == new
        moved = client.patch("/api/contents/data/edited.csv", json={"path": "data/renamed.csv"})
        assert moved.status_code == 200, moved.text
        assert client.delete("/api/contents/data/renamed.csv").status_code == 204
        assert not (lab.workspace / "data" / "renamed.csv").exists()


def test_notebook_save_load_and_checkpoints(lab: Lab) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# cohort"),
                                         nbformat.v4.new_code_cell("x = 1")])
    with lab.client() as client:
        put = client.put("/api/contents/work.ipynb",
                         json={"type": "notebook", "format": "json", "content": nb})
        assert put.status_code in (200, 201), put.text
        got = client.get("/api/contents/work.ipynb")
        assert got.status_code == 200
        assert got.json()["content"]["cells"][0]["source"] == "# cohort"
        cp = client.post("/api/contents/work.ipynb/checkpoints")
        assert cp.status_code == 201, cp.text
        nb.cells[0].source = "# changed"
        client.put("/api/contents/work.ipynb",
                   json={"type": "notebook", "format": "json", "content": nb})
        restored = client.post(f"/api/contents/work.ipynb/checkpoints/{cp.json()['id']}")
        assert restored.status_code == 204
        again = client.get("/api/contents/work.ipynb").json()
    assert again["content"]["cells"][0]["source"] == "# cohort"


def test_copying_a_binary_inside_the_workspace_works_reading_it_does_not(lab: Lab) -> None:
    with lab.client() as client:
        r = client.post("/api/contents/data", json={"copy_from": "data/scan.dcm"})
        assert r.status_code == 201, r.text
        assert "content" not in r.json() or r.json()["content"] is None
        copy = lab.workspace / r.json()["path"]
        assert copy.read_bytes() == dicom_like()
        assert client.get(f"/api/contents/{r.json()['path']}").status_code == 403


def test_an_upload_is_accepted_but_cannot_be_read_back(lab: Lab) -> None:
    payload = bytes(range(256)) * 4
    with lab.client() as client:
        put = client.put("/api/contents/upload.bin", json={
            "type": "file", "format": "base64", "content": base64.b64encode(payload).decode()})
        assert put.status_code in (200, 201), put.text
        assert (lab.workspace / "upload.bin").read_bytes() == payload
        assert client.get("/api/contents/upload.bin").status_code == 403
        assert client.get("/api/contents/upload.bin", params={"format": "base64"}).status_code == 403


def test_a_link_out_of_the_workspace_is_not_followed(lab: Lab, outside: Path) -> None:
    # a kernel can create these: it names targets it cannot see itself
    (lab.workspace / "escape").symlink_to(outside, target_is_directory=True)
    (lab.workspace / "environ").symlink_to("/proc/self/environ")
    (lab.workspace / "secret-link.txt").symlink_to(outside / "secret.txt")
    (lab.workspace / "alias.csv").symlink_to(lab.workspace / "data" / "cohort.csv")
    before = tree(outside)
    try:
        with lab.client() as client:
            for path in ("escape/secret.txt", "environ", "secret-link.txt", "escape"):
                r = client.get(f"/api/contents/{path}")
                assert r.status_code == 403, (path, r.status_code, r.text[:200])
                assert SECRET not in r.text and "JUPYTER" not in r.text
                assert "leads out of the workspace" in r.json()["message"]
            put = client.put("/api/contents/escape/planted.txt",
                             json={"type": "file", "format": "text", "content": "x"})
            assert put.status_code == 403
            moved = client.patch("/api/contents/data/cohort.csv", json={"path": "escape/c.csv"})
            assert moved.status_code == 403
            assert client.delete("/api/contents/escape/secret.txt").status_code == 403
            # the root still lists, without the links that lead out
            listing = client.get("/api/contents/")
            assert listing.status_code == 200
            names = {e["name"] for e in listing.json()["content"]}
            assert {"escape", "environ", "secret-link.txt"}.isdisjoint(names)
            assert "alias.csv" in names
            # a link that stays inside the workspace is an ordinary file
            alias = client.get("/api/contents/alias.csv")
            assert alias.status_code == 200 and alias.json()["format"] == "text"
        assert tree(outside) == before
        assert (outside / "secret.txt").read_text() == SECRET
    finally:
        for name in ("escape", "environ", "secret-link.txt", "alias.csv"):
            (lab.workspace / name).unlink()


def test_checkpoints_do_not_follow_a_link_out(lab: Lab, outside: Path) -> None:
    folder = lab.workspace / "linked"
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    (folder / ".ipynb_checkpoints").symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    with lab.client() as client:
        r = client.post("/api/contents/linked/notes.txt/checkpoints")
    assert r.status_code == 403, r.text
    assert "leads out of the workspace" in r.json()["message"]
    assert tree(outside) == before


def test_kernels_other_than_the_sandboxed_one_are_not_offered(lab: Lab) -> None:
    with lab.client() as client:
        specs = client.get("/api/kernelspecs").json()
        started = client.post("/api/kernels", json={"name": "python3"})
    assert set(specs["kernelspecs"]) == {"incisive"}
    assert specs["default"] == "incisive"
    meta = specs["kernelspecs"]["incisive"]["spec"]["metadata"]
    assert meta["kernel_provisioner"]["provisioner_name"] == "incisive-sandbox"
    assert started.status_code >= 400
    assert "python3" not in json.dumps(specs)


def test_the_server_is_not_reachable_without_a_token(lab: Lab) -> None:
    with httpx.Client(base_url=lab.url, timeout=10) as anon:
        r = anon.get("/api/contents/data/cohort.csv")
    assert r.status_code == 403
    assert SECRET not in r.text
