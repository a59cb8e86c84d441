"""Pod + CacheConfig → the JSONPatch (RFC 6902) that adds the podcache sidecar (pure).

What a pod gets: the ``podcache`` container (a native sidecar — an init container
with ``restartPolicy: Always`` placed first, so the app's own init containers can
use the cache — or a regular container), an in-memory ``emptyDir`` for the socket
mounted in every app container and init container with ``PODCACHE_SOCKET`` set,
the config ConfigMap read-only, the Redis secrets as env vars / files, and the
operator's sidecar image pull secrets in ``spec.imagePullSecrets`` when it has any.

Beware of JSONPatch indices: every op on an existing container uses the index it
had in the pod as received, so all of those come before the op that inserts the
sidecar at ``/spec/initContainers/0``. Idempotent: a pod that already has the
sidecar gets an empty patch — except that when the apiserver re-invokes us
(``reinvocationPolicy: IfNeeded``) after another webhook added containers to a pod
*we* injected, those new app containers get the socket mount and env too.
A hand-made ``podcache`` container without our annotation is left alone entirely.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch

from podcache_operator import rendering, settings

SIDECAR_NAME = "podcache"
SOCKET_VOLUME = "podcache-socket"
REDIS_SOCKET_PATH = f"{rendering.SOCKET_DIR}/redis.sock"
"""The sidecar's Redis-protocol socket (its ``resp.socket`` default), in the same volume."""
CONFIG_VOLUME = "podcache-config"
REDIS_CA_VOLUME = "podcache-redis-ca"
NO_TOKEN_VOLUME = "podcache-no-api-token"
API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where the ServiceAccount admission plugin mounts the API token; it skips a container
that already has a mount here. The sidecar never calls the API, so it gets an empty
directory: no credentials to leak, and the plugin, re-run after our mutation, changes
nothing, so the apiserver does not call the webhook a second time for every pod."""
INJECTED_ANNOTATION = "podcache.io/injected"
NOT_INJECTED_ANNOTATION = "podcache.io/not-injected"
"""Set by the webhook on a pod it admitted without the sidecar (why, in short): such a
pod was seen, unlike one created while no webhook answered (``bare_pod_restarts``)."""
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
PASSWORD_ENV = "PODCACHE_REDIS_PASSWORD"
SENTINEL_PASSWORD_ENV = "PODCACHE_SENTINEL_PASSWORD"

JSONPatch = list[dict[str, Any]]

PROBE_PATH = "/healthz"
"""On the metrics port; the sidecar answers it by asking its own sockets (``socket_health``)."""


class InjectionError(ValueError):
    """The pod cannot take the sidecar as it is (a name or path is already taken, no containers)."""


def is_injected(pod: Mapping[str, Any]) -> bool:
    """Whether the pod has a sidecar already (ours, or one made by hand)."""
    spec = pod.get("spec") or {}
    names = {
        c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
    }
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return SIDECAR_NAME in names or INJECTED_ANNOTATION in annotations


def native_enabled(spec: Mapping[str, Any], sidecar: settings.SidecarSettings) -> bool:
    native = (spec.get("sidecar") or {}).get("native")
    return sidecar.native if native is None else bool(native)


def build_patch(
    pod: Mapping[str, Any],
    *,
    cacheconfig: str,
    spec: Mapping[str, Any],
    sidecar: settings.SidecarSettings,
    port_clash: str = "move",
    notes: list[str] | None = None,
) -> JSONPatch:
    """The ops that inject the sidecar into ``pod``; ``[]`` if it already has one.

    When a container of the pod already declares the metrics port, ``port_clash="move"``
    gives this pod's sidecar the next free port (and says so in ``notes``: the Service
    targets the CacheConfig's port, so this pod is not scraped); ``"refuse"`` raises."""
    if is_injected(pod):
        return _reinvocation_ops(pod)
    pod_spec = pod.get("spec")
    if not isinstance(pod_spec, Mapping) or not pod_spec.get("containers"):
        raise InjectionError("spec.containers: the pod has no containers")
    native = native_enabled(spec, sidecar)
    ops: JSONPatch = []
    ops += _annotation_ops(pod, native=native)
    ops += _volume_ops(pod_spec, _volumes(cacheconfig=cacheconfig, spec=spec))
    ops += _pull_secret_ops(pod_spec, sidecar.image_pull_secrets)
    redis_socket = rendering.redis_socket_enabled(spec)
    for kind in ("containers", "initContainers"):
        for index, container in enumerate(pod_spec.get(kind) or []):
            ops += _app_container_ops(
                container, path=f"/spec/{kind}/{index}", redis_socket=redis_socket
            )
    container = sidecar_container(pod_spec, spec=spec, sidecar=sidecar, native=native)
    _avoid_port_clash(pod_spec, container, port_clash=port_clash, notes=notes)
    if native:
        if pod_spec.get("initContainers"):
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": container})
    return ops


def _declared_ports(pod_spec: Mapping[str, Any]) -> set[int]:
    ports: set[int] = set()
    for kind in ("containers", "initContainers"):
        for container in pod_spec.get(kind) or []:
            for port in container.get("ports") or []:
                if isinstance(port.get("containerPort"), int):
                    ports.add(port["containerPort"])
    return ports


def _avoid_port_clash(
    pod_spec: Mapping[str, Any],
    container: dict[str, Any],
    *,
    port_clash: str,
    notes: list[str] | None,
) -> None:
    """Two containers of a pod share one network namespace: the second to bind fails."""
    declared = _declared_ports(pod_spec)
    port = container["ports"][0]["containerPort"]
    if port not in declared:
        return
    if port_clash == "refuse":
        raise InjectionError(
            f"a container of the pod already uses port {port}, the sidecar's metrics port;"
            " set spec.metrics.port of the CacheConfig to a free one"
        )
    moved = next(p for p in range(port + 1, 65536) if p not in declared)
    _set_metrics_port(container, moved)
    if notes is not None:
        notes.append(
            f"a container of the pod already uses port {port}; the sidecar's metrics moved to"
            f" {moved}, which the CacheConfig's Service does not scrape (set spec.metrics.port)"
        )


def _reinvocation_ops(pod: Mapping[str, Any]) -> JSONPatch:
    """Socket mount and env for app containers added after our injection (by other webhooks)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if INJECTED_ANNOTATION not in annotations:
        return []  # somebody else's sidecar: not ours to touch
    pod_spec = pod.get("spec") or {}
    apps = [
        (kind, index, container)
        for kind in ("containers", "initContainers")
        for index, container in enumerate(pod_spec.get(kind) or [])
        if container.get("name") != SIDECAR_NAME
    ]
    # No CacheConfig at hand here: announce the Redis socket if the first injection did.
    redis_socket = any(
        item.get("name") == "PODCACHE_REDIS_SOCKET"
        for _, _, container in apps
        for item in container.get("env") or []
    )
    ops: JSONPatch = []
    for kind, index, container in apps:
        ops += _app_container_ops(
            container, path=f"/spec/{kind}/{index}", redis_socket=redis_socket
        )
    return ops


def apply_patch(pod: Mapping[str, Any], ops: JSONPatch) -> dict[str, Any]:
    """The pod as the apiserver will store it after ``ops`` (a copy; ``pod`` is untouched)."""
    return jsonpatch.apply_patch(copy.deepcopy(dict(pod)), ops)  # type: ignore[no-any-return]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _annotation_ops(pod: Mapping[str, Any], *, native: bool) -> JSONPatch:
    metadata = pod.get("metadata") or {}
    existing = metadata.get("annotations") or {}
    wanted = {INJECTED_ANNOTATION: "native" if native else "container"}
    containers = (pod.get("spec") or {}).get("containers") or []
    if DEFAULT_CONTAINER_ANNOTATION not in existing and containers:
        # `kubectl logs/exec` keep picking the app, not the sidecar.
        wanted[DEFAULT_CONTAINER_ANNOTATION] = containers[0].get("name", "")
    return _add_annotations(pod, wanted)


def not_injected_ops(pod: Mapping[str, Any], reason: str) -> JSONPatch:
    """Mark a pod admitted without the sidecar (``NOT_INJECTED_ANNOTATION``)."""
    return _add_annotations(pod, {NOT_INJECTED_ANNOTATION: reason[:256]})


def _add_annotations(pod: Mapping[str, Any], wanted: dict[str, str]) -> JSONPatch:
    metadata = pod.get("metadata") or {}
    if "metadata" not in pod:
        return [{"op": "add", "path": "/metadata", "value": {"annotations": wanted}}]
    if "annotations" not in metadata or metadata["annotations"] is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": wanted}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": value}
        for key, value in wanted.items()
    ]


def _volumes(*, cacheconfig: str, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        # Only a socket lives here; memory-backed so nothing touches the node's disk.
        {"name": SOCKET_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": CONFIG_VOLUME,
            "configMap": {
                "name": rendering.object_name(cacheconfig),
                "items": [{"key": rendering.CONFIG_KEY, "path": rendering.CONFIG_KEY}],
            },
        },
        {"name": NO_TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Ki"}},
    ]
    ca_ref = ((spec.get("redis") or {}).get("tls") or {}).get("caSecretRef")
    if spec.get("backend") == "redis" and ca_ref:
        volumes.append(
            {
                "name": REDIS_CA_VOLUME,
                "secret": {
                    "secretName": ca_ref["name"],
                    "items": [{"key": ca_ref.get("key") or "ca.crt", "path": "ca.crt"}],
                },
            }
        )
    return volumes


def _volume_ops(pod_spec: Mapping[str, Any], volumes: list[dict[str, Any]]) -> JSONPatch:
    existing = pod_spec.get("volumes") or []
    taken = {volume.get("name") for volume in existing}
    for volume in volumes:
        if volume["name"] in taken:
            raise InjectionError(
                f"spec.volumes: the pod already has a volume named {volume['name']!r}"
            )
    if not existing:
        return [{"op": "add", "path": "/spec/volumes", "value": volumes}]
    return [{"op": "add", "path": "/spec/volumes/-", "value": volume} for volume in volumes]


def _pull_secret_ops(pod_spec: Mapping[str, Any], names: tuple[str, ...]) -> JSONPatch:
    """The operator's sidecar pull secrets the pod does not list yet (appended: the pod's
    own come first)."""
    existing = pod_spec.get("imagePullSecrets") or []
    listed = {item.get("name") for item in existing if isinstance(item, Mapping)}
    missing = [{"name": name} for name in names if name not in listed]
    if not missing:
        return []
    if not existing:
        return [{"op": "add", "path": "/spec/imagePullSecrets", "value": missing}]
    return [{"op": "add", "path": "/spec/imagePullSecrets/-", "value": item} for item in missing]


def _app_container_ops(
    container: Mapping[str, Any], *, path: str, redis_socket: bool = True
) -> JSONPatch:
    ops: JSONPatch = []
    mounts = container.get("volumeMounts") or []
    for mount in mounts:
        if mount.get("name") == SOCKET_VOLUME:
            continue
        if mount.get("mountPath", "").rstrip("/") == rendering.SOCKET_DIR:
            raise InjectionError(
                f"{path[1:].replace('/', '.')}.volumeMounts: {rendering.SOCKET_DIR}"
                " is already mounted"
                f" in container {container.get('name')!r}"
            )
    mount = {"name": SOCKET_VOLUME, "mountPath": rendering.SOCKET_DIR}
    mounted = any(existing.get("name") == SOCKET_VOLUME for existing in mounts)
    if mounts and not mounted:
        ops.append({"op": "add", "path": f"{path}/volumeMounts/-", "value": mount})
    elif not mounts:
        ops.append({"op": "add", "path": f"{path}/volumeMounts", "value": [mount]})
    env = container.get("env") or []
    announced = [("PODCACHE_SOCKET", rendering.SOCKET_PATH)]
    if redis_socket:  # the same cache in the Redis protocol, for any Redis client (issue 12)
        announced.append(("PODCACHE_REDIS_SOCKET", REDIS_SOCKET_PATH))
    for name, value in announced:
        if any(item.get("name") == name for item in env):  # the app's own choice wins
            continue
        variable = {"name": name, "value": value}
        if env or any(op["path"] == f"{path}/env" for op in ops):
            ops.append({"op": "add", "path": f"{path}/env/-", "value": variable})
        else:
            ops.append({"op": "add", "path": f"{path}/env", "value": [variable]})
    return ops


def sidecar_container(
    pod_spec: Mapping[str, Any],
    *,
    spec: Mapping[str, Any],
    sidecar: settings.SidecarSettings,
    native: bool,
) -> dict[str, Any]:
    """The ``podcache`` container itself."""
    sidecar_spec = spec.get("sidecar") or {}
    env: list[dict[str, Any]] = [
        {"name": "PODCACHE_CONFIG", "value": rendering.CONFIG_PATH},
        {"name": "PODCACHE_SOCKET", "value": rendering.SOCKET_PATH},
        # The socket volume is private to the pod; its containers may run as users that
        # share no group (a container-level runAsUser, no fsGroup): all of them may connect.
        {"name": "PODCACHE_SOCKET_MODE", "value": "0666"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": SOCKET_VOLUME, "mountPath": rendering.SOCKET_DIR},
        {"name": CONFIG_VOLUME, "mountPath": rendering.CONFIG_DIR, "readOnly": True},
        {"name": NO_TOKEN_VOLUME, "mountPath": API_TOKEN_PATH, "readOnly": True},
    ]
    if spec.get("backend") == "redis":
        redis = spec.get("redis") or {}
        env += _secret_env(PASSWORD_ENV, redis.get("passwordSecretRef"))
        env += _secret_env(
            SENTINEL_PASSWORD_ENV, (redis.get("sentinel") or {}).get("passwordSecretRef")
        )
        if (redis.get("tls") or {}).get("caSecretRef"):
            mounts.append(
                {"name": REDIS_CA_VOLUME, "mountPath": rendering.REDIS_CA_DIR, "readOnly": True}
            )
    metrics_port = rendering.metrics_port_of(spec, sidecar.metrics_port)
    # Pinned for the pod's life: its declared port and its probes are immutable, so a
    # later spec.metrics.port reaches new pods only (a reload must not move the probe's port).
    env.append({"name": "PODCACHE_METRICS_PORT", "value": str(metrics_port)})
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": sidecar_spec.get("image") or sidecar.image,
        "imagePullPolicy": sidecar.image_pull_policy,
        "command": ["podcache-sidecar"],
        "args": ["--config", rendering.CONFIG_PATH],
        "env": env,
        "ports": [
            {
                "name": rendering.SIDECAR_PORT_NAME,
                "containerPort": metrics_port,
                "protocol": "TCP",
            }
        ],
        "volumeMounts": mounts,
        "resources": sidecar_resources(sidecar_spec.get("resources"), sidecar),
        "securityContext": _security_context(pod_spec, sidecar),
        # Native sidecars hold back the app's containers until this passes. httpGet, not
        # exec: an exec probe starts a Python interpreter in the sidecar's cgroup each time.
        # The sidecar listens on the port before its imports (podcache.sidecar.launcher),
        # so a probe waits for the answer instead of failing; 10 s covers a start slowed by
        # many pods starting at once on a small node (each failure is an event and a
        # second's wait for the app).
        "startupProbe": {
            **_probe_action(metrics_port),
            "periodSeconds": 1,
            "timeoutSeconds": 10,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            **_probe_action(metrics_port),
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
    }
    if native:
        container["restartPolicy"] = "Always"
    return container


def _probe_action(port: int) -> dict[str, Any]:
    return {"httpGet": {"path": PROBE_PATH, "port": port}}


def _set_metrics_port(container: dict[str, Any], port: int) -> None:
    container["ports"][0]["containerPort"] = port
    for env in container["env"]:
        if env["name"] == "PODCACHE_METRICS_PORT":
            env["value"] = str(port)
    for probe in ("startupProbe", "livenessProbe"):
        container[probe].update(_probe_action(port))


def _secret_env(name: str, ref: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not ref:
        return []
    return [
        {
            "name": name,
            "valueFrom": {
                "secretKeyRef": {"name": ref["name"], "key": ref.get("key") or "password"}
            },
        }
    ]


def sidecar_resources(
    resources: Mapping[str, Any] | None, sidecar: settings.SidecarSettings
) -> dict[str, Any]:
    """``spec.sidecar.resources`` when given, else the operator's defaults."""
    if resources:
        return {key: dict(value) for key, value in resources.items() if value}
    return {
        "requests": {"cpu": sidecar.cpu_request, "memory": sidecar.memory_request},
        "limits": {"memory": sidecar.memory_limit},
    }


def _security_context(
    pod_spec: Mapping[str, Any], sidecar: settings.SidecarSettings
) -> dict[str, Any]:
    """Restricted profile, with the pod's non-root UID/GID where it sets them."""
    pod_context = pod_spec.get("securityContext") or {}
    user = pod_context.get("runAsUser")
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": user if isinstance(user, int) and user > 0 else sidecar.run_as_user,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    group = pod_context.get("runAsGroup")
    if isinstance(group, int) and group > 0:
        context["runAsGroup"] = group
    return context
