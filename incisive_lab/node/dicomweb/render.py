"""Response bodies: ``multipart/related`` streams and streamed DICOM JSON arrays.

Both are yielded in chunks of about :data:`CHUNK` bytes, however small the parts: an ASGI
server sends each chunk of a synchronous iterator with a hop to a worker thread and a
write of its own, which for a series of a few hundred small objects cost more than
reading the files.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["BLOCK", "CHUNK", "file_chunks", "json_array", "multipart", "new_boundary"]

#: Bytes read from an object file per chunk.
BLOCK = 1 << 20
#: Bytes of a response body gathered before a chunk is yielded (parts are joined up to it).
CHUNK = 1 << 20


def new_boundary() -> str:
    """A random multipart boundary (32 hex digits; cannot occur by chance in a part)."""
    return secrets.token_hex(16)


def file_chunks(path: Path, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Yield a file's bytes (or ``length`` bytes from ``start``) in blocks of :data:`BLOCK`."""
    with open(path, "rb") as fh:
        fh.seek(start)
        left = length
        while left is None or left > 0:
            block = fh.read(BLOCK if left is None else min(BLOCK, left))
            if not block:
                break
            if left is not None:
                left -= len(block)
            yield block


def multipart(boundary: str,
              parts: Iterable[tuple[str, Callable[[], Iterable[bytes]]]]) -> Iterator[bytes]:
    """Yield a ``multipart/related`` body (RFC 2387) part by part.

    Parameters
    ----------
    boundary
        From :func:`new_boundary`.
    parts
        (Content-Type of the part, a callable giving the part's byte chunks); the callable
        is called only when the part is reached, so files are opened one at a time.
    """
    dash = f"--{boundary}".encode("ascii")
    pending: list[bytes] = []
    size = 0
    for content_type, body in parts:
        pending.append(dash + b"\r\nContent-Type: " + content_type.encode("ascii") + b"\r\n\r\n")
        for block in body():
            pending.append(block)
            size += len(block)
            if size >= CHUNK:
                yield b"".join(pending)
                pending, size = [], 0
        pending.append(b"\r\n")
    pending.append(dash + b"--\r\n")
    yield b"".join(pending)


def multipart_length(boundary: str, parts: Iterable[tuple[str, int]]) -> int:
    """The byte length :func:`multipart` produces for parts of (Content-Type, size)."""
    dash = len(boundary) + 2
    total = 0
    for content_type, size in parts:
        total += dash + len(b"\r\nContent-Type: ") + len(content_type) + 4 + size + 2
    return total + dash + 4


def json_array(items: Iterable[str]) -> Iterator[bytes]:
    """Yield a JSON array of already serialised JSON objects in chunks of about :data:`CHUNK`."""
    pending: list[str] = []
    size = 0
    opened = False
    for item in items:
        pending.append(item)
        size += len(item)
        if size >= CHUNK:
            yield (("," if opened else "[") + ",".join(pending)).encode("utf-8")
            opened = True
            pending, size = [], 0
    if not opened:
        yield ("[" + ",".join(pending) + "]").encode("utf-8")
    else:
        yield (("," + ",".join(pending) if pending else "") + "]").encode("utf-8")
