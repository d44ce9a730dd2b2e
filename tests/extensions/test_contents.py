"""The refusing contents manager in-process (no server): formats, copies, links, prefixes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tornado import web

from incisive_lab_server.contents import OutsideWorkspace, RefusingContentsManager
from incisive_lab_server.refusal import REFUSAL, RefusedFiles
from tests.extensions._lab import dicom_like


@pytest.fixture
def cm(tmp_path: Path) -> RefusingContentsManager:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "scan.dcm").write_bytes(dicom_like())
    (root / "notes.txt").write_text("notes")
    return RefusingContentsManager(root_dir=str(root))


def test_defaults_are_the_refusing_ones(cm: RefusingContentsManager) -> None:
    assert cm.files_handler_class is RefusedFiles
    assert cm.files_handler_params == {}
    assert type(cm.checkpoints).__name__ == "RefusingCheckpoints"


@pytest.mark.parametrize("fmt", ["base64", "byte", "anything"])
def test_only_text_reads_are_served(cm: RefusingContentsManager, fmt: str) -> None:
    for path in ("notes.txt", "scan.dcm"):
        with pytest.raises(web.HTTPError) as e:
            asyncio.run(cm.get(path, content=True, format=fmt))
        assert e.value.status_code == 403
        assert e.value.log_message == REFUSAL


def test_text_and_metadata_reads_are_served(cm: RefusingContentsManager) -> None:
    assert asyncio.run(cm.get("notes.txt"))["content"] == "notes"
    meta = asyncio.run(cm.get("scan.dcm", content=False, require_hash=True))
    assert meta["content"] is None and meta["hash"]


def test_a_copy_does_not_lend_its_permission_to_a_concurrent_read(
        cm: RefusingContentsManager) -> None:
    async def both() -> list[object]:
        return await asyncio.gather(cm.copy("scan.dcm"), cm.get("scan.dcm"),
                                    cm.get("scan.dcm", format="base64"), return_exceptions=True)

    copied, read, read64 = asyncio.run(both())
    assert isinstance(copied, dict) and copied["content"] is None
    assert (Path(cm.root_dir) / copied["path"]).read_bytes() == dicom_like()
    for refused in (read, read64):
        assert isinstance(refused, web.HTTPError) and refused.status_code == 403


def test_a_sibling_directory_with_the_same_prefix_is_outside(tmp_path: Path,
                                                             cm: RefusingContentsManager) -> None:
    sibling = tmp_path / "ws2"  # "/.../ws2" starts with "/.../ws"
    sibling.mkdir()
    (sibling / "secret.txt").write_text("x")
    (Path(cm.root_dir) / "sib").symlink_to(sibling)
    with pytest.raises(OutsideWorkspace):
        asyncio.run(cm.get("sib/secret.txt"))
    assert isinstance(OutsideWorkspace("p"), PermissionError)
