"""aiohttp's per-connection protocol, made to answer its own errors in the API's JSON shape.

Some requests never reach a route: the HTTP parser refuses them first (a request
line or header over 8190 bytes, bad chunked encoding, Content-Length together with
Transfer-Encoding, a malformed request line). aiohttp's ``RequestHandler`` answers
those itself, in text/plain, and logs each one at ERROR with a traceback. Here they
are answered like every other error of the socket API (``{"error", "message"}``, see
``errors.error_response``) and, being the client's fault, logged at DEBUG only.

Beware: ``RequestHandler`` has ``__slots__`` and no hook for its error answers, so
this subclasses it and builds it the way ``web.Server.__call__`` does, from the
server's keyword arguments (``Server._kwargs``, private to aiohttp).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from podcache.sidecar import errors

logger = logging.getLogger(__name__)


class JsonErrorsRequestHandler(RequestHandler):
    """A ``RequestHandler`` whose own error answers are JSON (see the module docstring)."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            logger.error("error serving a request", exc_info=exc)
        else:
            logger.debug("refused a request the HTTP parser rejected: %s", message or exc)
        if request.writer.output_size > 0:
            # Part of a response went out already: nothing valid can follow it.
            raise ConnectionError("a response was already started; closing the connection")
        code = errors.HTTP_CODES.get(status, "http_error")
        if status >= 500:
            text = "internal error" if status == 500 else f"HTTP {status}"
        else:
            # aiohttp's messages may quote the offending bytes: keep them short.
            text = (message or "the request could not be parsed").strip()[:200]
        response = errors.error_response(status, code, text)
        response.force_close()  # the byte stream cannot be trusted after a parse error
        return response


def factory(server: web.Server) -> Callable[[], RequestHandler]:
    """A protocol factory like ``server`` itself, making ``JsonErrorsRequestHandler``s."""
    kwargs = server._kwargs  # private: the options the runner gave the server

    def make() -> RequestHandler:
        return JsonErrorsRequestHandler(server, loop=asyncio.get_running_loop(), **kwargs)

    return make
