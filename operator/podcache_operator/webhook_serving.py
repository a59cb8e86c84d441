"""The webhook's HTTPS listener: certificates swapped in place, and readiness that means it.

Kopf's ``WebhookServer`` re-reads its certificate files every 60 s and, when they
changed, closes its listener and opens a new one: admissions fail while it is down,
and for a minute after the kubelet updated the Secret the old certificate is served.
``ReloadingWebhookServer`` keeps one listener for its whole life and loads a renewed
key pair into the live ``SSLContext`` (new handshakes get it, open connections keep
theirs), looking every ``file_check_interval`` seconds (the chart: 2).

Beware: the files change one by one unless they come from a Secret volume (the kubelet
swaps them together). A pair that does not match yet is tried again at the next look
and the current one keeps serving; it is first loaded into a throwaway context from
one read of the files, so the live context never gets half of a pair.

``on_listening`` is told True once the listener accepts TLS connections and False when
it closes: the operator's ``/readyz`` answers 200 only in between (kopf's ``/healthz``
is up before the webhook listens, while kopf still scans resources).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import pathlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable

import aiohttp.web
import kopf

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 2.0  # seconds between looks at the certificate files: three small reads


class Readiness:
    """Whether this replica answers admissions (the operator's ``/readyz``)."""

    def __init__(self, *, webhook: bool) -> None:
        self.webhook = webhook
        """Whether this process serves the webhook at all (off: nothing to wait for)."""
        self.listening = False

    def set_listening(self, listening: bool) -> None:
        self.listening = listening

    def problem(self) -> str | None:
        """Why this replica is not ready, or None when it is."""
        if self.webhook and not self.listening:
            return "the admission webhook is not listening yet"
        return None


class ReloadingWebhookServer(kopf.WebhookServer):
    """kopf's webhook server with one listener for life and in-place certificate reloads."""

    on_listening: Callable[[bool], None] | None = None
    """Told whether the listener accepts connections (readiness)."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("file_check_interval", CHECK_INTERVAL)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        if self.certfile is None or self.pkeyfile is None or self.context is not None:
            # kopf's own ways (a self-signed certificate, a caller's context) make no files
            # to reload: kopf serves them as it does.
            async for client_config in super().__call__(fn):
                self._listening(True)
                yield client_config
            return

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        digest = self._load(context)
        path = self.path.rstrip("/") if self.path else ""
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post(f"{path}/{{id:.*}}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            port = self.port or self._allocate_free_port()
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, port, ssl_context=context, reuse_address=True
            )
            await site.start()
            host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
            url = self._build_url("https", host, port, self.path or "")
            logger.info("Admission webhook listening on %s", url)
            self._listening(True)
            yield self._client_config(url)
            while True:
                await asyncio.sleep(self.file_check_interval)
                try:
                    current = self._digest()
                    if current == digest:
                        continue
                    digest = self._load(context)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    logger.warning(
                        "Webhook certificate files changed but cannot be loaded (yet): %s;"
                        " the current certificate keeps serving",
                        exc,
                    )
                    continue
                logger.info("Webhook certificate reloaded from %s", self.certfile)
                yield self._client_config(url)  # a managed configuration gets the new CA
        finally:
            self._listening(False)
            await asyncio.shield(runner.cleanup())

    def _listening(self, listening: bool) -> None:
        if self.on_listening is not None:
            self.on_listening(listening)

    def _paths(self) -> list[pathlib.Path]:
        return [pathlib.Path(str(p)) for p in (self.certfile, self.pkeyfile, self.cafile) if p]

    def _digest(self) -> str:
        hasher = hashlib.sha256()
        for path in self._paths():
            hasher.update(path.read_bytes())
        return hasher.hexdigest()

    def _load(self, context: ssl.SSLContext) -> str:
        """Load the key pair into ``context`` (all or nothing); the digest of what was read."""
        cert = pathlib.Path(str(self.certfile)).read_bytes()
        key = pathlib.Path(str(self.pkeyfile)).read_bytes()
        ca = pathlib.Path(str(self.cafile)).read_bytes() if self.cafile else b""
        with tempfile.TemporaryDirectory(prefix="podcache-webhook-") as folder:
            cert_path, key_path = pathlib.Path(folder, "tls.crt"), pathlib.Path(folder, "tls.key")
            cert_path.write_bytes(cert)
            key_path.touch(mode=0o600)
            key_path.write_bytes(key)
            trial = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
            trial.load_cert_chain(cert_path, key_path, self.password)  # raises on a mismatch
            context.load_cert_chain(cert_path, key_path, self.password)
        self.cadata = ca or cert
        return hashlib.sha256(b"".join((cert, key, ca))).hexdigest()

    def _client_config(self, url: str) -> kopf.WebhookClientConfig:
        client_config = kopf.WebhookClientConfig(url=url)
        if self.cadata is not None:
            client_config["caBundle"] = base64.b64encode(self.cadata).decode("ascii")
        return client_config
