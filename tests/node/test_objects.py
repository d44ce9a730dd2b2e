"""Content-addressed objects: naming, idempotence, no half-visible files, link or copy."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from incisive_lab.node import NodeStore, StoreError, extract_record
from tests.node.conftest import make_dicom, write_files


def test_object_named_by_sha256_and_readded_as_noop(tmp_path: Path) -> None:
    data = make_dicom()
    sha = hashlib.sha256(data).hexdigest()
    with NodeStore.open(tmp_path / "node") as store:
        first = store.add_bytes(data)
        again = store.add_bytes(data)
        assert first.new and not again.new
        assert first.path == tmp_path / "node" / "objects" / sha[:2] / f"{sha}.dcm"
        assert first.path.read_bytes() == data
        assert not os.stat(first.path).st_mode & 0o222  # read-only
        assert list(store.iter_objects()) == [(sha, len(data))]


def test_layout_reserves_private_and_datasets(tmp_path: Path) -> None:
    with NodeStore.open(tmp_path / "node"):
        pass
    node = tmp_path / "node"
    assert (node / "node.sqlite").is_file()
    assert (node / "datasets").is_dir() and (node / "objects" / "tmp").is_dir()
    assert (node / "private").stat().st_mode & 0o777 == 0o700


def test_crash_between_write_and_rename_leaves_nothing_visible(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_dicom(pixel=7)
    sha = hashlib.sha256(data).hexdigest()
    node = tmp_path / "node"
    with NodeStore.open(node) as store:
        empty = store.digest()

        def crash(_src: object, _dst: object) -> None:
            raise SystemExit("killed between fsync and rename")  # not an OSError: no cleanup

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(SystemExit):
            store.add_bytes(data)
        monkeypatch.undo()
        leftovers = list((node / "objects" / "tmp").iterdir())
        assert leftovers and leftovers[0].read_bytes() == data  # complete, but invisible
        assert not store.has_object(sha)
        assert store.digest() == empty
    with NodeStore.open(node) as store:  # no other store open: leftovers are removed
        assert list((node / "objects" / "tmp").iterdir()) == []
        assert store.digest() == empty
        assert store.add_bytes(data).new


def test_tmp_files_of_an_open_store_are_kept(tmp_path: Path) -> None:
    node = tmp_path / "node"
    with NodeStore.open(node):
        live = node / "objects" / "tmp" / "123-live.part"
        live.write_bytes(b"being written")
        with NodeStore.open(node):
            assert live.exists()  # another store holds the lock: not ours to clean
    with NodeStore.open(node):
        assert not live.exists()


def test_add_file_links_or_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_files(tmp_path / "deid", n_patients=1, n_series=1, n_instances=2)
    with NodeStore.open(tmp_path / "node") as store:
        linked = store.add_file(src[0])
        assert os.stat(linked.path).st_ino == os.stat(src[0]).st_ino
        copied = store.add_file(src[1], link=False)
        assert os.stat(copied.path).st_ino != os.stat(src[1]).st_ino
        assert copied.path.read_bytes() == src[1].read_bytes()

        def no_link(_a: object, _b: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        other = tmp_path / "other.dcm"
        other.write_bytes(make_dicom(pixel=9))
        monkeypatch.setattr(os, "link", no_link)
        fallback = store.add_file(other)
        assert fallback.new and os.stat(fallback.path).st_ino != os.stat(other).st_ino


def test_index_refuses_a_record_whose_object_is_missing(tmp_path: Path) -> None:
    data = make_dicom()
    with NodeStore.open(tmp_path / "node") as store:
        with pytest.raises(StoreError, match="not in the store"):
            store.add_instances([extract_record(data, dataset="d")])
        assert store.counts().instances == 0


def test_add_dicom_files_is_idempotent(tmp_path: Path) -> None:
    files = write_files(tmp_path / "deid")
    with NodeStore.open(tmp_path / "node") as store:
        first = store.add_dicom_files(files, dataset="d", batch=4)
        assert (first.files, first.objects_new, first.instances) == (18, 18, 18)
        assert (first.patients, first.studies, first.series) == (3, 3, 6)
        assert first.bytes == sum(f.stat().st_size for f in files)
        digest = store.digest()
        again = store.add_dicom_files(files, dataset="d", link=False)
        assert (again.objects_new, again.instances, again.bytes) == (0, 0, 0)
        assert store.digest() == digest
        assert store.verify_objects() == []


def test_verify_objects_reports_damage(tmp_path: Path) -> None:
    files = write_files(tmp_path / "deid", n_patients=1, n_series=1, n_instances=1)
    with NodeStore.open(tmp_path / "node") as store:
        store.add_dicom_files(files, dataset="d", link=False)
        row = store.index.instances()[0]
        path = store.object_path(row.sha256)
        os.chmod(path, 0o644)
        path.write_bytes(b"damaged")
        (problem,) = store.verify_objects()
        assert "hashes to" in problem and row.sop_uid in problem


def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = NodeStore.open(tmp_path / "node")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.add_bytes(b"x")


def test_an_object_cut_short_is_rewritten(tmp_path: Path) -> None:
    """A file left short by a power loss (its data never synced) does not count as stored."""
    data = make_dicom(pixel=3)
    with NodeStore.open(tmp_path / "node") as store:
        path = store.add_bytes(data).path
        os.chmod(path, 0o644)
        path.write_bytes(b"")
        again = store.add_bytes(data)
        assert again.new and path.read_bytes() == data
        src = tmp_path / "src.dcm"
        src.write_bytes(data)
        os.chmod(path, 0o644)
        path.write_bytes(data[:10])
        linked = store.add_file(src)
        assert linked.new and path.read_bytes() == data
