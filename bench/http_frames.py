"""The framing of one HTTP/1.1 message, for the benchmarks' bare clients and servers.

``bench_sidecar.py``'s load generator reads responses with it and ``lock_floor.py``
reads requests: both only need where a message with a ``Content-Length`` ends.
"""

from __future__ import annotations


def complete(buffer: bytes | bytearray) -> tuple[bytes, int, int] | None:
    """The head, the body's start and the end of the message at the start of ``buffer``;
    None while it is incomplete. A message without ``Content-Length`` has no body."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    at = head.lower().find(b"content-length:")
    length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
    total = end + 4 + length
    if len(buffer) < total:
        return None
    return head, end + 4, total
