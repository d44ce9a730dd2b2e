"""Response bodies: ``multipart/related`` streams and streamed DICOM JSON arrays."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["BLOCK", "file_chunks", "json_array", "multipart", "new_boundary"]

#: Bytes read from an object file per chunk.
BLOCK = 1 << 20


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
    for content_type, body in parts:
        yield dash + b"\r\nContent-Type: " + content_type.encode("ascii") + b"\r\n\r\n"
        yield from body()
        yield b"\r\n"
    yield dash + b"--\r\n"


def multipart_length(boundary: str, parts: Iterable[tuple[str, int]]) -> int:
    """The byte length :func:`multipart` produces for parts of (Content-Type, size)."""
    dash = len(boundary) + 2
    total = 0
    for content_type, size in parts:
        total += dash + len(b"\r\nContent-Type: ") + len(content_type) + 4 + size + 2
    return total + dash + 4


def json_array(items: Iterable[str]) -> Iterator[bytes]:
    """Yield a JSON array of already serialised JSON objects, one chunk per item."""
    first = True
    yield b"["
    for item in items:
        yield (item if first else "," + item).encode("utf-8")
        first = False
    yield b"]"
