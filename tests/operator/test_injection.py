"""Injecting the sidecar into a pod with a JSONPatch (pure functions).

Aspects: the patched pod is valid Kubernetes (``kubernetes_validate``, strict) for
one and several containers, init containers and existing volumes/env; native
sidecar vs regular container; socket volume, mount and env in every app container;
config volume read-only; POD_NAME from the downward API; Redis password and CA
from Secrets; metrics port; resources and the restricted security context;
idempotency (twice == once); pods we cannot inject into are refused clearly.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from podcache_operator import injection, settings
from tests.operator import samples

SIDECAR = settings.SidecarSettings(image="registry.example/podcache:1.2.3")


def inject(
    pod: dict[str, Any],
    spec: dict[str, Any] | None = None,
    sidecar: settings.SidecarSettings = SIDECAR,
) -> dict[str, Any]:
    ops = injection.build_patch(
        pod,
        cacheconfig="shop",
        spec=spec if spec is not None else samples.REDIS_SPEC,
        sidecar=sidecar,
    )
    return injection.apply_patch(pod, ops)


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    every = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    (found,) = [c for c in every if c["name"] == "podcache"]
    return found


def app_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    every = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    return [c for c in every if c["name"] != "podcache"]


SHAPES = [
    pytest.param({"containers": 1}, id="one-container"),
    pytest.param({"containers": 3}, id="several-containers"),
    pytest.param({"containers": 2, "init_containers": 2}, id="init-containers"),
    pytest.param({"containers": 1, "volumes": True}, id="existing-volumes-and-env"),
]


class TestValidPods:
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("native", [True, False])
    def test_patched_pod_is_valid(self, shape: dict[str, Any], native: bool) -> None:
        spec = samples.spec(samples.REDIS_SPEC, sidecar={"native": native})
        patched = inject(samples.pod(**shape), spec)
        kubernetes_validate.validate(patched, "1.30", strict=True)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_every_app_container_gets_the_socket(self, shape: dict[str, Any]) -> None:
        patched = inject(samples.pod(**shape))
        apps = app_containers(patched)
        assert len(apps) == shape["containers"] + shape.get("init_containers", 0)
        for container in apps:
            assert {"name": "podcache-socket", "mountPath": "/var/run/podcache"} in container[
                "volumeMounts"
            ]
            assert {
                "name": "PODCACHE_SOCKET",
                "value": "/var/run/podcache/cache.sock",
            } in container["env"]
            assert {
                "name": "PODCACHE_REDIS_SOCKET",
                "value": "/var/run/podcache/redis.sock",
            } in container["env"]

    def test_existing_volumes_mounts_and_env_are_kept(self) -> None:
        patched = inject(samples.pod(volumes=True))
        names = [v["name"] for v in patched["spec"]["volumes"]]
        assert names == ["data", "podcache-socket", "podcache-config", "podcache-no-api-token"]
        app = patched["spec"]["containers"][0]
        assert app["volumeMounts"][0] == {"name": "data", "mountPath": "/data"}
        assert app["env"][0] == {"name": "MODE", "value": "prod"}

    def test_the_apps_own_socket_env_wins(self) -> None:
        pod = samples.pod()
        pod["spec"]["containers"][0]["env"] = [{"name": "PODCACHE_SOCKET", "value": "/elsewhere"}]
        env = inject(pod)["spec"]["containers"][0]["env"]
        assert env == [
            {"name": "PODCACHE_SOCKET", "value": "/elsewhere"},
            {"name": "PODCACHE_REDIS_SOCKET", "value": "/var/run/podcache/redis.sock"},
        ]


class TestSidecar:
    def test_native_sidecar_is_the_first_init_container(self) -> None:
        patched = inject(
            samples.pod(init_containers=2),
            samples.spec(samples.REDIS_SPEC, sidecar={"native": True}),
        )
        names = [c["name"] for c in patched["spec"]["initContainers"]]
        assert names == ["podcache", "init0", "init1"]
        assert patched["spec"]["initContainers"][0]["restartPolicy"] == "Always"
        assert [c["name"] for c in patched["spec"]["containers"]] == ["app0"]

    def test_regular_sidecar_is_the_last_container(self) -> None:
        patched = inject(
            samples.pod(containers=2), samples.spec(samples.REDIS_SPEC, sidecar={"native": False})
        )
        assert [c["name"] for c in patched["spec"]["containers"]] == ["app0", "app1", "podcache"]
        assert "restartPolicy" not in sidecar_of(patched)
        assert "initContainers" not in patched["spec"]

    def test_native_follows_the_operator_default_when_the_spec_is_silent(self) -> None:
        off = settings.SidecarSettings(native=False)
        assert [
            c["name"] for c in inject(samples.pod(), samples.MEMORY_SPEC, off)["spec"]["containers"]
        ] == ["app0", "podcache"]
        assert (
            inject(samples.pod(), samples.MEMORY_SPEC)["spec"]["initContainers"][0]["name"]
            == "podcache"
        )

    def test_probes_are_http_gets_on_the_metrics_port(self) -> None:
        """Issue 18: an exec probe started a Python interpreter per probe in the sidecar's
        cgroup (every second during startup); the kubelet's httpGet costs nothing there."""
        sidecar = sidecar_of(inject(samples.pod()))
        for probe in ("startupProbe", "livenessProbe"):
            assert "exec" not in sidecar[probe]
            assert sidecar[probe]["httpGet"] == {"path": "/healthz", "port": 9090}

    def test_image_from_settings_or_spec(self) -> None:
        assert sidecar_of(inject(samples.pod()))["image"] == "registry.example/podcache:1.2.3"
        spec = samples.spec(samples.MEMORY_SPEC, sidecar={"image": "mine:2"})
        assert sidecar_of(inject(samples.pod(), spec))["image"] == "mine:2"

    def test_env_secrets_and_downward_api(self) -> None:
        env = {item["name"]: item for item in sidecar_of(inject(samples.pod()))["env"]}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["PODCACHE_REDIS_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "redis-auth", "key": "password"}
        }
        assert env["PODCACHE_CONFIG"]["value"] == "/etc/podcache/config.yaml"
        assert env["PODCACHE_SOCKET"]["value"] == "/var/run/podcache/cache.sock"

    def test_memory_backend_has_no_secrets(self) -> None:
        env = {
            item["name"] for item in sidecar_of(inject(samples.pod(), samples.MEMORY_SPEC))["env"]
        }
        assert "PODCACHE_REDIS_PASSWORD" not in env

    def test_sentinel_password(self) -> None:
        spec = samples.spec(
            samples.REDIS_SPEC,
            redis={
                "sentinel": {
                    "masterName": "m",
                    "addresses": ["s:26379"],
                    "passwordSecretRef": {"name": "sent", "key": "pw"},
                }
            },
        )
        env = {item["name"]: item for item in sidecar_of(inject(samples.pod(), spec))["env"]}
        assert env["PODCACHE_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "sent",
            "key": "pw",
        }

    def test_tls_ca_is_a_mounted_secret_file(self) -> None:
        spec = samples.spec(
            samples.REDIS_SPEC,
            redis={
                "url": "rediss://r:6380",
                "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca", "key": "ca.pem"}},
            },
        )
        patched = inject(samples.pod(), spec)
        volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
        assert volumes["podcache-redis-ca"]["secret"] == {
            "secretName": "redis-ca",
            "items": [{"key": "ca.pem", "path": "ca.crt"}],
        }
        mounts = sidecar_of(patched)["volumeMounts"]
        assert {
            "name": "podcache-redis-ca",
            "mountPath": "/var/run/secrets/podcache/redis-ca",
            "readOnly": True,
        } in mounts
        kubernetes_validate.validate(patched, "1.30", strict=True)

    def test_volumes(self) -> None:
        patched = inject(samples.pod())
        volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
        assert volumes["podcache-socket"]["emptyDir"]["medium"] == "Memory"
        assert volumes["podcache-config"]["configMap"]["name"] == "podcache-shop"
        mounts = sidecar_of(patched)["volumeMounts"]
        assert {"name": "podcache-config", "mountPath": "/etc/podcache", "readOnly": True} in mounts
        assert {"name": "podcache-socket", "mountPath": "/var/run/podcache"} in mounts

    def test_the_sidecar_gets_no_api_token(self) -> None:
        """It never calls the API; and with a mount at the token path the ServiceAccount
        plugin, re-run after the webhook's mutation, leaves the pod alone, so the
        apiserver does not reinvoke the webhook (tests/controlplane counts the calls)."""
        patched = inject(samples.pod())
        volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in sidecar_of(patched)["volumeMounts"]}
        token = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
        assert volumes[token["name"]] == {
            "name": token["name"], "emptyDir": {"medium": "Memory", "sizeLimit": "1Ki"}
        }
        app_mounts = patched["spec"]["containers"][0].get("volumeMounts") or []
        assert token["name"] not in [m["name"] for m in app_mounts]

    def test_metrics_port(self) -> None:
        ports = sidecar_of(inject(samples.pod()))["ports"]
        assert ports == [{"name": "podcache-prom", "containerPort": 9090, "protocol": "TCP"}]

    def test_every_container_of_the_pod_may_use_the_socket(self) -> None:
        """Regression (issue 9 defect 6): a container-level runAsUser got EACCES on 0660."""
        env = {e["name"]: e.get("value") for e in sidecar_of(inject(samples.pod()))["env"]}
        assert env["PODCACHE_SOCKET_MODE"] == "0666"

    def test_metrics_port_of_the_cacheconfig(self) -> None:
        spec = samples.spec(samples.MEMORY_SPEC, metrics={"port": 9464})
        sidecar = sidecar_of(inject(samples.pod(), spec))
        (port,) = sidecar["ports"]
        assert port["containerPort"] == 9464
        assert sidecar["livenessProbe"]["httpGet"]["port"] == 9464

    def test_the_metrics_port_is_pinned_for_the_pods_life(self) -> None:
        """A later spec.metrics.port must not move the listener from under the probes."""
        env = {e["name"]: e.get("value") for e in sidecar_of(inject(samples.pod()))["env"]}
        assert env["PODCACHE_METRICS_PORT"] == "9090"

    def test_an_app_port_named_metrics_does_not_clash(self) -> None:
        """Regression (issue 9 defect 2): both ports were named `metrics`."""
        pod = samples.pod()
        pod["spec"]["containers"][0]["ports"] = [{"name": "metrics", "containerPort": 8080}]
        injected = inject(pod)
        names = [p["name"] for c in all_containers(injected) for p in c.get("ports", [])]
        assert len(names) == len(set(names)), names

    def test_an_app_on_the_metrics_port_moves_the_sidecar_with_a_note(self) -> None:
        """Regression (issue 9 defect 2): a duplicate port 9090 that nothing detected."""
        pod = samples.pod()
        pod["spec"]["containers"][0]["ports"] = [{"containerPort": 9090}, {"containerPort": 9091}]
        notes: list[str] = []
        ops = injection.build_patch(
            pod, cacheconfig="shop", spec=samples.MEMORY_SPEC, sidecar=SIDECAR, notes=notes
        )
        sidecar = sidecar_of(injection.apply_patch(pod, ops))
        assert sidecar["ports"][0]["containerPort"] == 9092
        assert {"name": "PODCACHE_METRICS_PORT", "value": "9092"} in sidecar["env"]
        assert [e["name"] for e in sidecar["env"]].count("PODCACHE_METRICS_PORT") == 1
        assert sidecar["startupProbe"]["httpGet"]["port"] == 9092
        assert sidecar["livenessProbe"]["httpGet"]["port"] == 9092
        assert "already uses port 9090" in notes[0]

    def test_an_app_on_the_metrics_port_is_refused_when_asked(self) -> None:
        pod = samples.pod()
        pod["spec"]["containers"][0]["ports"] = [{"containerPort": 9090}]
        with pytest.raises(injection.InjectionError, match="already uses port 9090"):
            injection.build_patch(
                pod,
                cacheconfig="shop",
                spec=samples.MEMORY_SPEC,
                sidecar=SIDECAR,
                port_clash="refuse",
            )

    def test_restricted_security_context(self) -> None:
        context = sidecar_of(inject(samples.pod()))["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}

    def test_sidecar_shares_the_pods_non_root_identity(self) -> None:
        pod = samples.pod()
        pod["spec"]["securityContext"] = {"runAsUser": 1234, "runAsGroup": 5678}
        context = sidecar_of(inject(pod))["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (1234, 5678)

    def test_resources_default_and_override(self) -> None:
        assert sidecar_of(inject(samples.pod()))["resources"] == {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }
        spec = samples.spec(
            samples.MEMORY_SPEC, sidecar={"resources": {"limits": {"memory": "1Gi"}}}
        )
        assert sidecar_of(inject(samples.pod(), spec))["resources"] == {"limits": {"memory": "1Gi"}}

    def test_annotations(self) -> None:
        annotations = inject(samples.pod(containers=2))["metadata"]["annotations"]
        assert annotations["podcache.io/injected"] == "native"
        assert annotations["kubectl.kubernetes.io/default-container"] == "app0"

    def test_existing_annotations_are_kept(self) -> None:
        pod = samples.pod()
        pod["metadata"]["annotations"] = {
            "team": "shop",
            "kubectl.kubernetes.io/default-container": "app0",
        }
        annotations = inject(pod)["metadata"]["annotations"]
        assert annotations["team"] == "shop"
        assert annotations["podcache.io/injected"] == "native"


class TestImagePullSecrets:
    """The operator's sidecar pull secrets (the chart's sidecar.imagePullSecrets): a private
    registry's sidecar image is pulled with the pod's own imagePullSecrets."""

    PRIVATE = settings.SidecarSettings(
        image="registry.corp/podcache:1.2.3", image_pull_secrets=("regcred", "mirror")
    )

    def test_none_configured_leaves_the_pod_alone(self) -> None:
        assert "imagePullSecrets" not in inject(samples.pod())["spec"]
        pod = samples.pod()
        pod["spec"]["imagePullSecrets"] = [{"name": "apps"}]
        assert inject(pod)["spec"]["imagePullSecrets"] == [{"name": "apps"}]

    @pytest.mark.parametrize("native", [True, False])
    def test_added_to_a_pod_without_any(self, native: bool) -> None:
        spec = samples.spec(samples.REDIS_SPEC, sidecar={"native": native})
        patched = inject(samples.pod(), spec, self.PRIVATE)
        assert patched["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
        kubernetes_validate.validate(patched, "1.30", strict=True)

    def test_an_empty_list_is_filled(self) -> None:
        pod = samples.pod()
        pod["spec"]["imagePullSecrets"] = []
        patched = inject(pod, sidecar=self.PRIVATE)
        assert patched["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]

    def test_the_pods_own_come_first_and_none_is_listed_twice(self) -> None:
        pod = samples.pod()
        pod["spec"]["imagePullSecrets"] = [{"name": "apps"}, {"name": "mirror"}]
        patched = inject(pod, sidecar=self.PRIVATE)
        assert patched["spec"]["imagePullSecrets"] == [
            {"name": "apps"},
            {"name": "mirror"},
            {"name": "regcred"},
        ]
        kubernetes_validate.validate(patched, "1.30", strict=True)

    def test_injecting_twice_adds_nothing(self) -> None:
        once = inject(samples.pod(), sidecar=self.PRIVATE)
        assert inject(once, sidecar=self.PRIVATE) == once

    def test_the_spec_image_keeps_the_secrets(self) -> None:
        """spec.sidecar.image overrides the image, not where the operator's secrets go."""
        spec = samples.spec(samples.MEMORY_SPEC, sidecar={"image": "registry.corp/other:2"})
        patched = inject(samples.pod(), spec, self.PRIVATE)
        assert sidecar_of(patched)["image"] == "registry.corp/other:2"
        assert [s["name"] for s in patched["spec"]["imagePullSecrets"]] == ["regcred", "mirror"]


class TestIdempotency:
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("native", [True, False])
    def test_twice_equals_once(self, shape: dict[str, Any], native: bool) -> None:
        spec = samples.spec(samples.REDIS_SPEC, sidecar={"native": native})
        once = inject(samples.pod(**shape), spec)
        assert injection.build_patch(once, cacheconfig="shop", spec=spec, sidecar=SIDECAR) == []
        assert inject(once, spec) == once

    def test_a_pod_with_a_hand_made_sidecar_is_left_alone(self) -> None:
        pod = samples.pod()
        pod["spec"]["containers"].append({"name": "podcache", "image": "mine"})
        assert injection.build_patch(pod, cacheconfig="shop", spec={}, sidecar=SIDECAR) == []

    def test_input_is_not_modified(self) -> None:
        pod = samples.pod(init_containers=1, volumes=True)
        before = samples.spec(pod)
        inject(pod)
        assert pod == before


class TestRefusals:
    def test_no_containers(self) -> None:
        with pytest.raises(injection.InjectionError, match=r"spec\.containers"):
            injection.build_patch({"spec": {}}, cacheconfig="x", spec={}, sidecar=SIDECAR)

    def test_volume_name_taken(self) -> None:
        pod = samples.pod()
        pod["spec"]["volumes"] = [{"name": "podcache-socket", "emptyDir": {}}]
        with pytest.raises(injection.InjectionError, match="podcache-socket"):
            injection.build_patch(pod, cacheconfig="x", spec={}, sidecar=SIDECAR)

    def test_socket_path_taken(self) -> None:
        pod = samples.pod(volumes=True)
        pod["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "data", "mountPath": "/var/run/podcache/"}
        )
        with pytest.raises(injection.InjectionError, match="/var/run/podcache"):
            injection.build_patch(pod, cacheconfig="x", spec={}, sidecar=SIDECAR)


class TestReinvocation:
    """``reinvocationPolicy: IfNeeded``: containers added by later webhooks get the socket too."""

    def test_a_container_added_after_injection_gets_the_socket(self) -> None:
        once = inject(samples.pod())
        once["spec"]["containers"].append({"name": "mesh-proxy", "image": "proxy:1"})
        again = inject(once)
        proxy = again["spec"]["containers"][-1]
        assert proxy["volumeMounts"] == [
            {"name": "podcache-socket", "mountPath": "/var/run/podcache"}
        ]
        assert proxy["env"] == [
            {"name": "PODCACHE_SOCKET", "value": "/var/run/podcache/cache.sock"},
            {"name": "PODCACHE_REDIS_SOCKET", "value": "/var/run/podcache/redis.sock"},
        ]
        assert sum(c["name"] == "podcache" for c in again["spec"]["initContainers"]) == 1
        assert inject(again) == again
        kubernetes_validate.validate(again, "1.30", strict=True)

    def test_no_redis_socket_announced_when_turned_off(self) -> None:
        spec = samples.spec(samples.REDIS_SPEC, sidecar={"redisSocket": False})
        once = inject(samples.pod(), spec)
        names = [item["name"] for item in once["spec"]["containers"][0]["env"]]
        assert "PODCACHE_SOCKET" in names
        assert "PODCACHE_REDIS_SOCKET" not in names
        once["spec"]["containers"].append({"name": "mesh-proxy", "image": "proxy:1"})
        again = inject(once, spec)
        assert again["spec"]["containers"][-1]["env"] == [
            {"name": "PODCACHE_SOCKET", "value": "/var/run/podcache/cache.sock"}
        ]

    def test_a_hand_made_sidecar_pod_gets_nothing(self) -> None:
        pod = samples.pod(containers=2)
        pod["spec"]["containers"].append({"name": "podcache", "image": "mine"})
        assert injection.build_patch(pod, cacheconfig="shop", spec={}, sidecar=SIDECAR) == []
