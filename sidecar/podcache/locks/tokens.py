"""Lock tokens: 128 random bits as 32 hex digits, from ``os.urandom`` read in blocks.

Why not ``secrets.token_hex(16)`` per acquire: that is one ``getrandom`` system call per
lock, and on the lock path through the socket a system call is among the dearer steps
(bench/bench_sidecar.py, issue 11). The bytes are the same kernel CSPRNG's, read 4 KiB
at a time and handed out once each; a forked child starts with an empty block, so
parent and child never share a token.
"""

from __future__ import annotations

import os
import threading

TOKEN_BYTES = 16
_BLOCK = 256 * TOKEN_BYTES


class _Pool:
    def __init__(self) -> None:
        self.block = b""
        self.offset = 0
        self.lock = threading.Lock()  # a library user may acquire from several threads

    def reset(self) -> None:
        self.block = b""
        self.offset = 0
        self.lock = threading.Lock()


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.reset)


def new_token() -> str:
    """A fresh lock token (unpredictable, never handed out twice by this process)."""
    pool = _POOL
    with pool.lock:
        offset = pool.offset
        if offset + TOKEN_BYTES > len(pool.block):
            pool.block = os.urandom(_BLOCK)
            offset = 0
        pool.offset = offset + TOKEN_BYTES
        block = pool.block
    return block[offset:offset + TOKEN_BYTES].hex()
