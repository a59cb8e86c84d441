"""A second mutating webhook for reinvocation tests: adds one container to each pod.

It stands for any other injector (a service mesh, a log shipper) that runs after
podcache's webhook; the apiserver calls it by ``url:`` on 127.0.0.1 with a certificate
from the test CA.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.controlplane.pki import KeyPair

ADDED = {"name": "late-app", "image": "registry.example/late:1", "command": ["sleep", "1d"]}


def _review_answer(review: dict[str, Any]) -> dict[str, Any]:
    request = review["request"]
    pod = request["object"]
    names = [c["name"] for c in pod["spec"]["containers"]]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    if ADDED["name"] not in names:
        patch = [{"op": "add", "path": "/spec/containers/-", "value": ADDED}]
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class _Handler(http.server.BaseHTTPRequestHandler):
    calls: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps(_review_answer(json.loads(body))).encode()
        self.calls.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@contextmanager
def container_adding_webhook(cert: KeyPair) -> Iterator[tuple[str, list[str]]]:
    """Serve the webhook; yields its URL and the list of paths it was called on."""
    calls: list[str] = []
    handler = type("Handler", (_Handler,), {"calls": calls})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert.cert), str(cert.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/add", calls
    finally:
        server.shutdown()
        server.server_close()
