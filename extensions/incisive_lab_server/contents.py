"""The contents manager that refuses to hand binary file contents to the browser.

``/api/contents/<path>`` is how JupyterLab opens, saves, lists, renames and copies files.
Reading a notebook or a text file stays (the editor needs it); what is refused:

- ``format=base64`` reads: the way a browser gets any file's raw bytes;
- any read of a file that is not UTF-8 text (a DICOM file, an image, an archive), whatever
  ``format`` and ``type`` the request names: without ``format`` the stock manager would fall
  back to base64;
- any path that leads out of the workspace through a symbolic link. A kernel can create a link
  in the workspace to anything it can name (``/proc/self/environ`` of the server, the
  server's runtime directory); the kernel cannot follow it inside its sandbox, but the server,
  which runs outside that sandbox, would. The stock manager checks the path's spelling, not
  where its links lead. Such links are left out of directory listings, and reading, writing,
  renaming, deleting or checkpointing through them is refused. Checkpoints
  (``.ipynb_checkpoints``) get the same check.

Uploads (saves with ``format=base64``) are not refused: bringing a file in is not a download.
Copying a binary file inside the workspace still works: the copy never reaches the browser.
"""

from __future__ import annotations

import contextvars
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jupyter_server.services.contents.filecheckpoints import AsyncFileCheckpoints
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web
from traitlets import default

from .refusal import REASON, REFUSAL, RefusedFiles

__all__ = ["RefusingCheckpoints", "RefusingContentsManager"]

# Set while the manager itself reads a file for a copy inside the workspace: the bytes go
# from disk to disk, never to the browser. Per asyncio task, so one request cannot lend it
# to another.
_COPYING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "incisive_lab_server_copying", default=False
)


class OutsideWorkspace(web.HTTPError, PermissionError):
    """A path that leads out of the workspace through a symbolic link.

    An HTTP ``403`` for the handler; also a ``PermissionError`` (``EACCES``), which the stock
    directory listing skips silently, so a directory holding such a link still lists.
    """

    def __init__(self, path: str) -> None:
        web.HTTPError.__init__(
            self,
            403,
            f"Refused: {path!r} leads out of the workspace through a symbolic link; "
            "the server does not follow it (remove the link from a notebook).",
            reason="Outside the workspace",
        )
        self.errno = errno.EACCES


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class _WorkspaceConfined:
    """``_get_os_path`` that also refuses paths whose links resolve outside ``root_dir``."""

    root_dir: str

    def _get_os_path(self, path: str) -> str:
        os_path: str = super()._get_os_path(path)  # type: ignore[misc]
        _check_inside(os_path, self.root_dir, path)
        return os_path


def _check_inside(os_path: str, root_dir: str, api_path: str) -> None:
    if not _inside(os.path.realpath(os_path), os.path.realpath(root_dir)):
        raise OutsideWorkspace(api_path)


class RefusingCheckpoints(_WorkspaceConfined, AsyncFileCheckpoints):
    """File checkpoints confined to the workspace, ``.ipynb_checkpoints`` links included."""

    def checkpoint_path(self, checkpoint_id: str, path: str) -> str:
        """The checkpoint's file, refused when it resolves outside the workspace."""
        cp_path: str = super().checkpoint_path(checkpoint_id, path)
        _check_inside(cp_path, self.root_dir, path)
        return cp_path


def _refuse(path: str, log: Any) -> web.HTTPError:
    log.warning("incisive_lab_server: refused the contents of %r (binary or base64 read)", path)
    return web.HTTPError(403, REFUSAL, reason=REASON)


class RefusingContentsManager(_WorkspaceConfined, AsyncLargeFileManager):  # type: ignore[misc]
    """The large-file manager without base64 reads, binary contents or links out.

    Set ``ServerApp.contents_manager_class`` to this class; the extension refuses to start
    when the server runs another one.
    """

    @default("files_handler_class")
    def _files_handler_class_default(self) -> type[RefusedFiles]:
        return RefusedFiles

    @default("files_handler_params")
    def _files_handler_params_default(self) -> dict[str, Any]:
        return {}

    @default("checkpoints_class")
    def _checkpoints_class_default(self) -> type[RefusingCheckpoints]:
        return RefusingCheckpoints

    async def get(
        self,
        path: str,
        content: bool = True,
        type: str | None = None,
        format: str | None = None,
        require_hash: bool = False,
    ) -> dict[str, Any]:
        """A model of ``path``; a base64 (or any non-text) read is refused before the file is
        opened.

        Parameters are those of :meth:`ContentsManager.get`.
        """
        if content and format not in (None, "text") and not _COPYING.get():
            raise _refuse(path, self.log)
        model: dict[str, Any] = await super().get(
            path, content=content, type=type, format=format, require_hash=require_hash
        )
        return model

    async def _read_file(  # type: ignore[override]
        self, os_path: str, format: str | None, raw: bool = False
    ) -> tuple[Any, ...]:
        """Read a file for a model: UTF-8 text only, unless the manager copies it.

        ``format="byte"`` (hashes, internal use) is not a model read and is left alone.
        """
        if format == "byte" or _COPYING.get():
            result: tuple[Any, ...] = await super()._read_file(os_path, format, raw=raw)
            return result
        if format not in (None, "text"):
            raise _refuse(os_path, self.log)
        try:
            result = await super()._read_file(os_path, "text", raw=raw)
        except web.HTTPError as e:
            if e.status_code == 400 and e.reason == "bad format":
                raise _refuse(os_path, self.log) from None
            raise
        return result

    async def copy(self, from_path: str, to_path: str | None = None) -> dict[str, Any]:
        """Copy a file inside the workspace, binary files included."""
        with _copying():
            model: dict[str, Any] = await super().copy(from_path, to_path)
        return model


@contextmanager
def _copying() -> Iterator[None]:
    token = _COPYING.set(True)
    try:
        yield
    finally:
        _COPYING.reset(token)
