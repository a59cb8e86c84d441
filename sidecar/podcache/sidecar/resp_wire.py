"""RESP2/RESP3 replies, written by hand; requests are parsed by ``hiredis.Reader``.

Why the two halves differ: parsing is where the bugs and the CPU are (lengths,
partial frames, nesting), so it is left to hiredis, a well-kept C parser that redis-py
itself uses. Writing a reply is a handful of concatenations of a type byte, a length
and CRLF; no library offers a server-side reply encoder (hiredis has none; redis-py's
encoder writes requests only), and a call into one would cost more than the bytes.

Every function returns ``bytes`` ready for ``transport.write``. Functions taking
``proto`` choose between RESP2 and RESP3 shapes exactly where Redis does: null
(``$-1`` vs ``_``), maps (flat array vs ``%``), sets (array vs ``~``), verbatim text
(bulk vs ``=``). Integers are ``:``, errors ``-`` in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
EMPTY_ARRAY = b"*0\r\n"
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"
NULL_ARRAY2 = b"*-1\r\n"

_SMALL_INTS = [b":%d\r\n" % n for n in range(-2, 1024)]
"""TTL's -2/-1, counts and small INCRs are pre-encoded: most integer replies hit this."""


def simple(text: str) -> bytes:
    """A status reply such as ``+OK``; ``text`` must not contain CR or LF."""
    return b"+" + text.encode() + b"\r\n"


def error(text: str) -> bytes:
    """An error reply; ``text`` starts with its code (``ERR``, ``WRONGTYPE``, ...).

    CR and LF would end the reply early and desynchronise the client, so they become
    spaces (Redis does the same to error strings it builds from user input)."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def integer(value: int) -> bytes:
    if -2 <= value < 1024:
        return _SMALL_INTS[value + 2]
    return b":%d\r\n" % value


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def null(proto: int) -> bytes:
    return NULL3 if proto == 3 else NULL2


def bulk_or_null(value: bytes | None, proto: int) -> bytes:
    if value is None:
        return NULL3 if proto == 3 else NULL2
    return b"$%d\r\n%b\r\n" % (len(value), value)


def array(items: Iterable[bytes]) -> bytes:
    """An array of already encoded replies."""
    parts = list(items)
    return b"*%d\r\n" % len(parts) + b"".join(parts)


def bulk_array(values: Iterable[bytes | None], proto: int) -> bytes:
    """An array of bulk strings (None as null), e.g. MGET's or SCAN's keys."""
    return array(bulk_or_null(value, proto) for value in values)


def set_of(values: Iterable[bytes], proto: int) -> bytes:
    parts = [bulk(value) for value in values]
    return (b"~" if proto == 3 else b"*") + b"%d\r\n" % len(parts) + b"".join(parts)


def mapping(pairs: Mapping[bytes, bytes], proto: int) -> bytes:
    """A map of encoded keys to encoded values: ``%`` in RESP3, a flat array in RESP2."""
    body = b"".join(key + value for key, value in pairs.items())
    if proto == 3:
        return b"%%%d\r\n" % len(pairs) + body
    return b"*%d\r\n" % (2 * len(pairs)) + body


def verbatim(text: bytes, proto: int) -> bytes:
    """Text meant for humans (INFO): a verbatim string in RESP3, a bulk string in RESP2."""
    if proto == 3:
        return b"=%d\r\ntxt:%b\r\n" % (len(text) + 4, text)
    return bulk(text)
