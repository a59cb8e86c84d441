"""Large GET replies of the pipelined Redis connection read with one copy instead of two.

Why: hiredis copies every byte it is fed into its own buffer (``Reader.feed``, which
also regrows that buffer from empty for each large reply) and copies the reply out
again into a new ``bytes`` (``Reader.gets``). For a 1 MiB GET that was about a quarter
of the sidecar's CPU (issue 11). Here the payload of a large bulk reply is kept as the
chunks the transport read (memoryviews, no copy) and joined once into the value.

What is parsed here, and only here: the ``$<length>\\r\\n`` header of a bulk string
and its ``\\r\\n`` terminator, and only when the connection's next reply is a plain
``GET``'s (a bulk string, nil or an error, never an aggregate) and hiredis holds no part
of a reply (see ``_Link.data_received`` in ``redis_pipeline``). Everything else (nil,
errors, small values, every other command's reply, whatever follows the payload) is
hiredis's, as before; this is not a RESP parser.
"""

from __future__ import annotations

BIG_REPLY = 64 * 1024
"""Bulk replies at least this long are gathered here; smaller ones are cheaper in hiredis."""

MIN_CHUNK = 16 * 1024
"""Reads shorter than this never start a gathered reply (one length check per read on the
small-value path); a big reply whose first read is shorter is left to hiredis."""

GET_COMMAND = b"*2\r\n$3\r\nGET\r\n"
"""How ``redis_pipeline.pack`` starts ``GET <key>``: the replies that may be gathered."""

_MAX_HEADER = 24  # "$" + up to 20 digits + CRLF


def big_bulk_header(data: memoryview) -> tuple[int, int] | None:
    """``(payload length, payload offset)`` when ``data`` starts a bulk string of at
    least ``BIG_REPLY`` bytes whose header is complete; else None (hiredis's turn)."""
    if not data or data[0] != 0x24:  # "$"
        return None
    head = bytes(data[:_MAX_HEADER])
    end = head.find(b"\r\n", 1)
    if end < 0:
        return None
    digits = head[1:end]
    if not digits.isdigit():  # "$-1" (nil) or garbage: hiredis answers or refuses it
        return None
    size = int(digits)
    if size < BIG_REPLY:
        return None
    return size, end + 2


class BulkCollector:
    """The payload of one large bulk reply, gathered from the reads it arrives in."""

    __slots__ = ("_chunks", "_missing", "_terminator", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._chunks: list[memoryview] = []
        self._missing = size
        self._terminator = b""

    def feed(self, data: memoryview) -> int:
        """Take what belongs to this reply from the front of ``data``; the bytes taken."""
        taken = 0
        if self._missing:
            part = data[: self._missing]
            taken = len(part)
            if taken:
                self._chunks.append(part)
                self._missing -= taken
        if not self._missing:
            # The CRLF after the payload may itself arrive split across two reads.
            tail = bytes(data[taken : taken + 2 - len(self._terminator)])
            self._terminator += tail
            taken += len(tail)
        return taken

    @property
    def complete(self) -> bool:
        return not self._missing and len(self._terminator) == 2

    def value(self) -> bytes:
        """The payload as one ``bytes`` (the one copy); ValueError if it was not CRLF-ended."""
        if self._terminator != b"\r\n":
            raise ValueError(f"a bulk reply of {self.size} bytes ended with {self._terminator!r}")
        return b"".join(self._chunks)
