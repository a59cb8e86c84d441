"""The sidecar-injecting webhook over HTTPS, fed AdmissionReviews as kube-apiserver sends them.

Aspects: kopf's managed MutatingWebhookConfiguration (objectSelector on the label,
CREATE of pods, our URL and CA); a labelled pod gets a JSONPatch that yields the
injected pod, valid for Kubernetes; an injected pod gets no patch; a pod naming a
missing CacheConfig is admitted unchanged with a warning, or denied when so
configured; pods we cannot inject into are denied with a reason; malformed
requests get a 400 with a JSON reason and the server keeps serving. The JSONPatch
sent is the one ``injection.build_patch`` makes; the handler called outside our
server (under another kopf webhook server) gives kopf a patch with the same result.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import kubernetes_validate
import pytest
from kopf._cogs.clients import watching

from podcache_operator import cacheconfig_mirror, handlers, injection, webhook
from tests.operator import emulator, samples
from tests.operator.conftest import (
    WEBHOOKS,
    ClusterEmulator,
    eventually,
    get,
    webhook_ssl_context,
)
from tests.operator.test_operator import create, ready


def review(
    pod: dict[str, Any], *, operation: str = "CREATE", dry_run: bool = False
) -> dict[str, Any]:
    """An AdmissionReview as kube-apiserver posts it for a pod creation."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": pod["metadata"].get("name"),
            "namespace": "shop",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": str(uuid.uuid4()),
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


@pytest.fixture
async def url(cluster: ClusterEmulator, operator: Any) -> str:
    """The webhook URL as kopf wrote it into the managed configuration."""
    config = await eventually(
        lambda: (get(cluster, WEBHOOKS, "podcache.io", None) or {}).get("webhooks"),
        what="the managed MutatingWebhookConfiguration",
    )
    return str(config[0]["clientConfig"]["url"])


@pytest.fixture
async def client(certificates: dict[str, Path]) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=webhook_ssl_context(certificates))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def post(client: aiohttp.ClientSession, url: str, body: Any) -> dict[str, Any]:
    async with client.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == body["request"]["uid"]
    return answer["response"]


def marked_only(pod: dict[str, Any], response: dict[str, Any]) -> str:
    """The pod came back unmodified but for ``podcache.io/not-injected``: its value."""
    after = patched(pod, response)
    mark = after["metadata"]["annotations"].pop("podcache.io/not-injected")
    if not after["metadata"]["annotations"]:
        del after["metadata"]["annotations"]
    assert after == pod
    assert isinstance(mark, str)
    return mark


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return injection.apply_patch(pod, ops)


async def test_managed_configuration(
    cluster: ClusterEmulator, certificates: dict[str, Path], url: str
) -> None:
    (hook,) = get(cluster, WEBHOOKS, "podcache.io", None)["webhooks"]
    assert hook["objectSelector"] == {
        "matchExpressions": [{"key": "podcache.io/config", "operator": "Exists"}]
    }
    assert hook["rules"][0]["resources"] == ["pods"]
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["sideEffects"] == "None"
    assert url.startswith("https://127.0.0.1:")
    assert url.endswith("/inject")
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == certificates["ca.crt"].read_bytes()


class TestInjection:
    @pytest.mark.parametrize(
        "shape", [{}, {"containers": 2, "init_containers": 1}, {"volumes": True}]
    )
    async def test_labelled_pod_gets_the_sidecar(
        self,
        cluster: ClusterEmulator,
        client: aiohttp.ClientSession,
        url: str,
        operator: Any,
        shape: dict[str, Any],
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        await eventually(lambda: ready(cluster, "shop"), what="Ready")
        pod = samples.pod(**shape)
        response = await post(client, url, review(pod))
        assert response["allowed"] is True
        result = patched(pod, response)
        expected_ops = injection.build_patch(
            pod, cacheconfig="shop", spec=samples.MEMORY_SPEC, sidecar=operator.sidecar
        )
        assert result == injection.apply_patch(pod, expected_ops)
        assert json.loads(base64.b64decode(response["patch"])) == expected_ops  # as built
        assert result["spec"]["initContainers"][0]["image"] == "podcache:test"
        kubernetes_validate.validate(result, "1.30", strict=True)

    async def test_a_just_created_cacheconfig_is_found(
        self, cluster: ClusterEmulator, client: aiohttp.ClientSession, url: str
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)  # no wait: the index may not have it yet
        response = await post(client, url, review(samples.pod()))
        assert response["allowed"] is True
        assert "patch" in response

    async def test_injected_pod_gets_no_patch(
        self, cluster: ClusterEmulator, client: aiohttp.ClientSession, url: str, operator: Any
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        pod = samples.pod()
        once = injection.apply_patch(
            pod,
            injection.build_patch(
                pod, cacheconfig="shop", spec=samples.MEMORY_SPEC, sidecar=operator.sidecar
            ),
        )
        response = await post(client, url, review(once))
        assert response["allowed"] is True
        assert "patch" not in response

    async def test_missing_cacheconfig_is_admitted_with_a_warning(
        self, client: aiohttp.ClientSession, url: str
    ) -> None:
        pod = samples.pod(config="nope")
        response = await post(client, url, review(pod))
        assert response["allowed"] is True
        assert marked_only(pod, response) == "no CacheConfig nope"
        (warning,) = response["warnings"]
        assert "CacheConfig shop/nope" in warning
        assert "without the podcache sidecar" in warning

    @pytest.mark.parametrize("operator_settings", [{"reject_missing_config": True}], indirect=True)
    async def test_missing_cacheconfig_is_denied_when_configured(
        self, client: aiohttp.ClientSession, url: str
    ) -> None:
        response = await post(client, url, review(samples.pod(config="nope")))
        assert response["allowed"] is False
        assert response["status"]["code"] == 400
        assert "CacheConfig shop/nope" in response["status"]["message"]

    async def test_pod_we_cannot_inject_into_is_admitted_unmodified_with_a_warning(
        self, cluster: ClusterEmulator, client: aiohttp.ClientSession, url: str
    ) -> None:
        """failurePolicy Ignore (the default): as the apiserver would if we did not answer."""
        await create(cluster, "shop", samples.MEMORY_SPEC)
        pod = samples.pod()
        pod["spec"]["volumes"] = [{"name": "podcache-socket", "emptyDir": {}}]
        response = await post(client, url, review(pod))
        assert response["allowed"] is True
        assert "podcache-socket" in marked_only(pod, response)
        assert "podcache-socket" in response["warnings"][0]
        assert "admitted without the podcache sidecar" in response["warnings"][0]

    async def test_warns_when_the_cacheconfig_is_not_ready(
        self, cluster: ClusterEmulator, client: aiohttp.ClientSession, url: str
    ) -> None:
        await create(cluster, "shop", samples.spec(samples.MEMORY_SPEC, defaultTTL="soon"))
        await eventually(
            lambda: (
                "InvalidSpec"
                in json.dumps(get(cluster, "podcache.io/v1alpha1/cacheconfigs", "shop"))
            ),
            what="InvalidSpec",
        )
        # The webhook reads kopf's index, which follows the status a moment later.
        for _ in range(100):
            response = await post(client, url, review(samples.pod()))
            assert response["allowed"] is True
            if response.get("warnings"):
                break
            await asyncio.sleep(0.02)
        assert any("not Ready (InvalidSpec" in warning for warning in response["warnings"])
        assert "patch" in response  # still injected: the sidecar waits for its config


class TestMalformed:
    @pytest.mark.parametrize(
        ("body", "words"),
        [
            (b"{not json", "not a JSON document"),
            (b"[]", "expected an AdmissionReview object, got list"),
            (b'{"kind": "Pod", "apiVersion": "v1"}', "kind: expected AdmissionReview"),
            (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v2"}', "apiVersion"),
            (
                b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}',
                "request: missing",
            ),
        ],
    )
    async def test_bad_bodies_get_400(
        self, client: aiohttp.ClientSession, url: str, body: bytes, words: str
    ) -> None:
        async with client.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            text = await response.text()
        assert words in text

    @pytest.mark.parametrize(
        ("damage", "words"),
        [
            (lambda r: r["request"].pop("uid"), "request.uid"),
            (lambda r: r["request"].pop("resource"), "request.resource"),
            (lambda r: r["request"].update(operation="EXPLODE"), "request.operation"),
            (lambda r: r["request"].pop("userInfo"), "request.userInfo"),
            (lambda r: r["request"].update(object=None), "request.object"),
            (lambda r: r["request"].update(object="a pod"), "request.object"),
        ],
    )
    async def test_incomplete_requests_get_400_as_json(
        self, client: aiohttp.ClientSession, url: str, damage: Any, words: str
    ) -> None:
        body = review(samples.pod())
        damage(body)
        async with client.post(url, json=body) as response:
            assert response.status == 400
            answer = await response.json()
        assert answer["error"] == "bad_admission_review"
        assert words in answer["message"]

    async def test_a_pod_without_containers_is_denied(
        self, cluster: ClusterEmulator, client: aiohttp.ClientSession, url: str
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        pod = samples.pod()
        pod["spec"] = {}
        response = await post(client, url, review(pod))
        assert response["allowed"] is True
        # Unmodified but for the mark that the webhook saw it (bare_pod_restarts).
        marked = patched(pod, response)
        assert marked["spec"] == {}
        assert "spec.containers" in marked["metadata"]["annotations"]["podcache.io/not-injected"]
        assert "spec.containers" in response["warnings"][0]

    async def test_server_keeps_serving_after_garbage(
        self, cluster: ClusterEmulator, client: aiohttp.ClientSession, url: str
    ) -> None:
        await create(cluster, "shop", samples.MEMORY_SPEC)
        for garbage in (b"\x00\xff", b"null", b'{"request": 1}', b"9" * 10000):
            async with client.post(url, data=garbage) as response:
                assert response.status == 400
        response = await post(client, url, review(samples.pod()))
        assert response["allowed"] is True
        assert "patch" in response

    async def test_unlabelled_pod_is_admitted_untouched(
        self, client: aiohttp.ClientSession, url: str
    ) -> None:
        pod = samples.pod()
        del pod["metadata"]["labels"]
        response = await post(client, url, review(pod))
        assert response["allowed"] is True
        assert "patch" not in response


async def test_handler_outside_our_server_patches_through_kopf(
    certificates: dict[str, Path],
) -> None:
    config = emulator.test_settings(certificates)
    pod = samples.pod(containers=2, init_containers=1)
    pod["metadata"]["namespace"] = "shop"
    body = kopf.Body(pod)
    patch = kopf.Patch(body=body)
    cacheconfig = {"metadata": {"name": "shop", "namespace": "shop"}, "spec": samples.MEMORY_SPEC}
    mirror = cacheconfig_mirror.CacheConfigMirror()
    mirror.apply({"type": None, "object": cacheconfig})
    mirror.apply(watching.Bookmark.LISTED)
    warnings: list[str] = []
    await webhook.inject(
        body=body,
        patch=patch,
        warnings=warnings,
        memo=kopf.Memo(
            config=config,
            kopf_settings=kopf.OperatorSettings(),
            state=handlers.RuntimeState(cacheconfig_mirror=mirror),
        ),
        logger=logging.getLogger(__name__),
    )
    expected = injection.apply_patch(
        pod,
        injection.build_patch(
            pod, cacheconfig="shop", spec=samples.MEMORY_SPEC, sidecar=config.sidecar
        ),
    )
    assert injection.apply_patch(pod, patch.as_json_patch()) == expected
    assert warnings == []


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            samples.spec(
                samples.MEMORY_SPEC,
                sidecar={"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "500m"}}},
            ),
            "cpu: request 1 must be less than or equal to limit 500m",
        ),
        (samples.MEMORY_SPEC, "podcache-socket"),
    ],
)
@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
async def test_what_cannot_be_injected_follows_the_failure_policy(
    certificates: dict[str, Path], spec: dict[str, Any], words: str, policy: str
) -> None:
    """Never a patch the apiserver would refuse: under Ignore the pod is admitted as it
    is with a warning; under Fail it is denied with the reason."""
    base = emulator.test_settings(certificates)
    config = dataclasses.replace(
        base, webhook=dataclasses.replace(base.webhook, failure_policy=policy)
    )
    pod = samples.pod()
    pod["metadata"]["namespace"] = "shop"
    if words == "podcache-socket":
        pod["spec"]["volumes"] = [{"name": "podcache-socket", "emptyDir": {}}]
    body = kopf.Body(pod)
    patch = kopf.Patch(body=body)
    mirror = cacheconfig_mirror.CacheConfigMirror()
    mirror.apply(
        {"type": None, "object": {"metadata": {"name": "shop", "namespace": "shop"}, "spec": spec}}
    )
    mirror.apply(watching.Bookmark.LISTED)
    memo = kopf.Memo(
        config=config,
        kopf_settings=kopf.OperatorSettings(),
        state=handlers.RuntimeState(cacheconfig_mirror=mirror),
    )
    warnings: list[str] = []
    call = webhook.inject(
        body=body, patch=patch, warnings=warnings, memo=memo, logger=logging.getLogger(__name__)
    )
    if policy == "Fail":
        with pytest.raises(kopf.AdmissionError, match=words):
            await call
    else:
        await call
        assert any(words in warning for warning in warnings), warnings
    if policy == "Fail":
        assert not patch
    else:  # only the mark that the webhook saw it (bare_pod_restarts leaves it alone)
        assert list(patch) == ["metadata"]
        assert words in patch["metadata"]["annotations"]["podcache.io/not-injected"]
