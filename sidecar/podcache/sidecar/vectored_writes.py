"""Headers and a large body sent by one vectored write instead of joined into a new buffer.

aiohttp sends a response's buffered headers together with its body. Where it trusts
``transport.writelines`` it hands both over as they are; on Python below 3.12.9 (and
3.13.0 and 3.13.1) it joins them into one new ``bytes`` instead (``SKIP_WRITELINES``),
because asyncio's own ``writelines`` on those versions either copies anyway or has
CVE-2024-12254 (3.12+). For a 1 MiB GET that join was about 15 % of the sidecar's CPU
(issue 11). The sidecar runs on uvloop, whose ``writelines`` is its own: it keeps
references to the buffers and sends them with one ``writev`` (no join, no copy, and
none of asyncio's code), so on a uvloop loop the join is pure cost.

``enable`` turns it off for this process when, and only when, the running loop is
uvloop's; aiohttp reads the flag at each write. Under asyncio's loop nothing changes.
"""

from __future__ import annotations

import asyncio

from aiohttp import http_writer

_FLAG = "SKIP_WRITELINES"


def enable(loop: asyncio.AbstractEventLoop) -> bool:
    """Let aiohttp use ``writelines`` on ``loop``'s transports; True when it now does."""
    if type(loop).__module__.split(".")[0] != "uvloop" or not hasattr(http_writer, _FLAG):
        return False
    setattr(http_writer, _FLAG, False)
    return True
