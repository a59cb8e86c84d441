"""The Helm chart, rendered by Helm's own engine (helm-python-sdk).

Aspects:
- lint in strict mode is clean for every value set;
- Chart.yaml: apiVersion v2, appVersion equal to the project version, kubeVersion;
- values.schema.json closes every object (additionalProperties) and rejects typos;
- CRDs: gated by crds.enabled, kept by crds.keep, the CRD file included verbatim;
- the operator Deployment: replicas, peering identity, restricted security contexts,
  probes on kopf's liveness endpoint, env names the operator's settings really read;
- the webhook: objectSelector, failurePolicy, sideEffects, TLS (Helm CA or cert-manager);
- monitoring: ServiceMonitor and the Grafana dashboard ConfigMap only when enabled;
- incompatible values fail with a message that names them;
- NOTES.txt: warnings first, then what was deployed, then next steps.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import threading
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy import chart


def _walk_schema(node: Any, path: str = "$") -> list[str]:
    """Paths of object schemas that leave additionalProperties open by omission."""
    missing: list[str] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "additionalProperties" not in node:
            missing.append(path)
        if "properties" in node and node.get("additionalProperties") is not False:
            missing.append(f"{path} (has properties but additionalProperties is not false)")
        for key, value in node.items():
            missing.extend(_walk_schema(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            missing.extend(_walk_schema(value, f"{path}[{index}]"))
    return missing


class TestChartMetadata:
    def test_chart_yaml(self) -> None:
        with helm.Chart.load(chart.CHART_DIR) as loaded:
            metadata = loaded.metadata
        project = tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["project"]
        assert metadata["apiVersion"] == "v2"
        assert metadata["appVersion"] == project["version"]
        assert metadata["kubeVersion"].startswith(">=")

    @pytest.mark.parametrize("value_set", sorted(chart.VALUE_SETS))
    def test_lint_strict_is_clean(self, value_set: str) -> None:
        report = helm.lint(
            chart.CHART_DIR,
            chart.VALUE_SETS[value_set],
            strict=True,
            namespace=chart.NAMESPACE,
            kube_version="v1.30.0",
        )
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []

    def test_every_schema_object_is_closed(self) -> None:
        schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
        assert _walk_schema(schema) == []

    def test_every_default_value_is_in_the_schema(self) -> None:
        with helm.Chart.load(chart.CHART_DIR) as loaded:
            loaded.validate_schema(loaded.values)

    @pytest.mark.parametrize(
        ("values", "needle"),
        [
            ({"operator": {"replicas": 3}}, "replicas"),
            ({"webhook": {"failurePolicy": "Sometimes"}}, "failurePolicy"),
            ({"sidecar": {"image": {"tag": "1.0", "tga": "x"}}}, "tga"),
            ({"monitoring": {"serviceMonitor": {"interval": "soon"}}}, "interval"),
        ],
    )
    def test_schema_rejects_typos_and_bad_values(self, values: dict[str, Any], needle: str) -> None:
        with (
            helm.Chart.load(chart.CHART_DIR) as loaded,
            pytest.raises(helm.HelmValuesError) as caught,
        ):
            loaded.validate_schema(values)
        assert needle in str(caught.value)

    def test_values_yaml_comments_every_key(self) -> None:
        """cert-manager's habit: a comment line above every key of values.yaml."""
        lines = (chart.CHART_DIR / "values.yaml").read_text().splitlines()
        uncommented = []
        for index, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
                continue
            previous = lines[index - 1].strip() if index else ""
            is_block_child = previous.endswith(":") and not previous.startswith("#")
            if not previous.startswith("#") and not is_block_child:
                uncommented.append(f"{index + 1}: {stripped}")
        assert uncommented == []

    def test_helpers_are_prefixed_and_commented(self) -> None:
        source = (chart.CHART_DIR / "templates" / "_helpers.tpl").read_text()
        defines = re.findall(r'(\*/\}\}\s*)?\{\{-? define "([^"]+)"', source)
        assert len(defines) >= 5
        for comment_end, name in defines:
            assert name.startswith("podcache."), name
            assert comment_end, f"{name} has no comment above it"
            assert f"{name}:" in source, f"the comment above {name} does not name it"

    @pytest.mark.parametrize("value_set", sorted(chart.VALUE_SETS))
    def test_no_trailing_whitespace(self, value_set: str) -> None:
        with helm.Chart.load(chart.CHART_DIR) as loaded:
            rendered = loaded.render(
                chart.VALUE_SETS[value_set], name=chart.RELEASE, namespace=chart.NAMESPACE
            )
        untidy = [
            f"{path}:{number}"
            for path, text in rendered.items()
            for number, line in enumerate(text.splitlines(), start=1)
            if line != line.rstrip()
        ]
        assert untidy == []


class TestCrds:
    def test_crds_enabled_and_kept_by_default(self, default_release: chart.Release) -> None:
        crds = {
            crd["metadata"]["name"]: crd
            for crd in default_release.of_kind("CustomResourceDefinition")
        }
        assert set(crds) == {"cacheconfigs.podcache.io", "clusterkopfpeerings.kopf.dev"}
        for crd in crds.values():
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == chart.RELEASE

    def test_cacheconfig_crd_is_the_operator_file(self, default_release: chart.Release) -> None:
        source = yaml.safe_load(chart.CRD_FILE.read_text())
        rendered = next(
            crd
            for crd in default_release.of_kind("CustomResourceDefinition")
            if crd["metadata"]["name"] == "cacheconfigs.podcache.io"
        )
        assert rendered["spec"] == source["spec"]

    def test_crds_off(self, releases: dict[str, chart.Release]) -> None:
        release = releases["no-crds"]
        assert release.of_kind("CustomResourceDefinition") == []
        assert release.of_kind("ClusterKopfPeering") == []
        assert "crds.enabled=false" in release.notes

    def test_not_kept_when_keep_is_off(self) -> None:
        release = chart.render({"crds": {"keep": False}})
        for crd in release.of_kind("CustomResourceDefinition"):
            assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})

    def test_no_peering_object_is_shipped(self, default_release: chart.Release) -> None:
        """Regression: a post-install hook making it failed `helm install` on a real
        apiserver whenever the kopf.dev CRD of the same release was not yet in discovery
        ("no matches for kind ClusterKopfPeering"). The operator creates it instead."""
        assert default_release.of_kind("ClusterKopfPeering") == []
        env = chart.env_of(chart.container(default_release.one("Deployment"), "operator"))
        assert env["PODCACHE_PEERING_NAME"] == "podcache-operator"


class TestOperatorDeployment:
    def test_replicas_and_pdb(self, releases: dict[str, chart.Release]) -> None:
        default = releases["default"]
        assert default.one("Deployment")["spec"]["replicas"] == 1
        assert default.one("PodDisruptionBudget")["spec"] == {
            "selector": default.one("Deployment")["spec"]["selector"],
            "maxUnavailable": 1,
        }
        ha = releases["ha"]
        assert ha.one("Deployment")["spec"]["replicas"] == 3
        assert ha.one("PodDisruptionBudget")["spec"]["minAvailable"] == 2
        assert "maxUnavailable" not in ha.one("PodDisruptionBudget")["spec"]

    def test_pod_identity_for_kopf_peering(self, releases: dict[str, chart.Release]) -> None:
        env = chart.env_of(chart.container(releases["ha"].one("Deployment"), "operator"))
        assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert "PODCACHE_STANDALONE" not in env

    def test_restricted_security_contexts(self, default_release: chart.Release) -> None:
        pod = default_release.one("Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = chart.container(default_release.one("Deployment"), "operator")["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]

    def test_default_resources_and_settable(self, releases: dict[str, chart.Release]) -> None:
        """Regression (issue 9, defect 11): the operator had no resources by default."""
        assert chart.container(releases["default"].one("Deployment"), "operator")["resources"] == {
            "requests": {"cpu": "50m", "memory": "96Mi"},
            "limits": {"memory": "256Mi"},
        }
        resources = chart.container(releases["legacy-sidecar"].one("Deployment"), "operator")[
            "resources"
        ]
        assert resources["requests"] == {"cpu": "50m", "memory": "96Mi"}

    def test_a_stopping_replica_serves_the_webhook_while_it_leaves_the_service(self) -> None:
        """Regression (node test of helm upgrade): the old replica stopped at once, the
        webhook Service still led to it, and a pod created then started without its
        sidecar (failurePolicy Ignore). Now it sleeps before SIGTERM, inside the grace."""
        default = chart.render()
        deployment = default.one("Deployment")
        operator = chart.container(deployment, "operator")
        assert operator["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > 5
        off = chart.container(
            chart.render({"operator": {"preStopSleepSeconds": 0}}).one("Deployment"), "operator"
        )
        assert "lifecycle" not in off

    def test_liveness_hits_kopf_and_readiness_the_webhook(
        self, default_release: chart.Release
    ) -> None:
        """Regression (issue 9, defect 10): readiness was kopf's /healthz, up before the
        webhook listened; /readyz on the metrics port answers 200 only once it does."""
        operator = chart.container(default_release.one("Deployment"), "operator")
        env = chart.env_of(operator)
        ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
        assert env["PODCACHE_LIVENESS_ENDPOINT"] == f"http://0.0.0.0:{ports['health']}/healthz"
        assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    def test_env_is_read_by_operator_settings(self, default_release: chart.Release) -> None:
        """Every PODCACHE_* variable the chart sets parses in Settings.from_env, with effect."""
        settings = pytest.importorskip("podcache_operator.settings")
        operator = chart.container(default_release.one("Deployment"), "operator")
        env = {
            name: value for name, value in chart.env_of(operator).items() if isinstance(value, str)
        }
        parsed = settings.Settings.from_env(env)
        ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
        assert parsed.webhook.port == ports["webhook"]
        assert parsed.metrics.port == ports["metrics"]
        assert parsed.webhook.managed is None  # the chart owns the webhook configuration
        mount = next(m for m in operator["volumeMounts"] if m["name"] == "webhook-tls")
        assert parsed.webhook.cert_file == f"{mount['mountPath']}/tls.crt"
        assert parsed.webhook.key_file == f"{mount['mountPath']}/tls.key"
        assert parsed.sidecar.image == "ghcr.io/podcache/podcache:0.1.0"
        assert parsed.sidecar.native is True  # auto, and Helm's default version is recent
        assert parsed.peering.name == "podcache-operator"
        source = (chart.ROOT / "operator" / "podcache_operator" / "settings.py").read_text()
        unknown = [
            name for name in env if name.startswith("PODCACHE_") and f'"{name}"' not in source
        ]
        assert unknown == []

    def test_sidecar_values_reach_the_operator(self) -> None:
        settings = pytest.importorskip("podcache_operator.settings")
        release = chart.render(
            {
                "sidecar": {
                    "image": {
                        "registry": "registry.example",
                        "repository": "team/podcache",
                        "digest": "sha256:" + "a" * 64,
                    },
                    "native": False,
                    "metricsPort": 9102,
                    "resources": {
                        "requests": {"cpu": "25m", "memory": "48Mi"},
                        "limits": {"memory": "96Mi"},
                    },
                }
            }
        )
        env = chart.env_of(chart.container(release.one("Deployment"), "operator"))
        parsed = settings.Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
        assert parsed.sidecar.image == "registry.example/team/podcache@sha256:" + "a" * 64
        assert parsed.sidecar.native is False
        assert parsed.sidecar.metrics_port == 9102
        assert (
            parsed.sidecar.cpu_request,
            parsed.sidecar.memory_request,
            parsed.sidecar.memory_limit,
        ) == ("25m", "48Mi", "96Mi")

    def test_image_tag_defaults_to_app_version(self, default_release: chart.Release) -> None:
        operator = chart.container(default_release.one("Deployment"), "operator")
        assert operator["image"] == "ghcr.io/podcache/podcache:0.1.0"
        assert operator["command"] == ["podcache-operator"]


def _images(release: chart.Release) -> tuple[str, str, str, str]:
    """(operator image, its pull policy, sidecar image, its pull policy) as deployed."""
    operator = chart.container(release.one("Deployment"), "operator")
    env = chart.env_of(operator)
    return (
        operator["image"],
        operator["imagePullPolicy"],
        env["PODCACHE_SIDECAR_IMAGE"],
        env["PODCACHE_SIDECAR_IMAGE_PULL_POLICY"],
    )


class TestImage:
    """image.* is the one place for both images; operator.image / sidecar.image override."""

    def test_defaults(self, default_release: chart.Release) -> None:
        assert _images(default_release) == (
            "ghcr.io/podcache/podcache:0.1.0",
            "IfNotPresent",
            "ghcr.io/podcache/podcache:0.1.0",
            "IfNotPresent",
        )

    def test_one_place_sets_both(self, releases: dict[str, chart.Release]) -> None:
        reference = "registry.corp.example/podcache/podcache:2.0.0"
        assert _images(releases["private-registry"]) == (reference, "Always", reference, "Always")

    def test_a_locally_built_image(self) -> None:
        """The README's kind section: localhost/podcache:dev, never pulled."""
        release = chart.render(
            {
                "image": {
                    "registry": "localhost",
                    "repository": "podcache",
                    "tag": "dev",
                    "pullPolicy": "Never",
                }
            }
        )
        assert _images(release) == ("localhost/podcache:dev", "Never") * 2

    def test_the_readmes_kind_section(self) -> None:
        """README "Try it on kind": the helm install's --set flags run the image it built
        and loaded, for the operator and the sidecar, never pulled."""
        readme = (chart.ROOT / "README.md").read_text()
        section = readme.split("### Try it on kind", 1)[1].split("\n## ", 1)[0]
        (built,) = set(re.findall(r"docker build -t (\S+) \.", section))
        assert f"kind load docker-image {built} " in section
        assert f"podman save --format docker-archive -o podcache.tar {built}" in section
        install = section[section.index("helm install") :].split("\nkubectl", 1)[0]
        values: dict[str, Any] = {}
        for key, value in re.findall(r"--set ([\w.]+)=(\S+)", install):
            *parents, leaf = key.split(".")
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        assert _images(chart.render(values)) == (built, "Never") * 2

    def test_a_digest_pins_both(self) -> None:
        digest = "sha256:" + "b" * 64
        release = chart.render({"image": {"tag": "2.0.0", "digest": digest}})
        assert _images(release)[0] == f"ghcr.io/podcache/podcache@{digest}"
        assert _images(release)[2] == f"ghcr.io/podcache/podcache@{digest}"

    @pytest.mark.parametrize(
        ("values", "operator", "sidecar"),
        [
            pytest.param(
                {"operator": {"image": {"tag": "2.0.1"}}},
                "ghcr.io/podcache/podcache:2.0.1",
                "ghcr.io/podcache/podcache:0.1.0",
                id="operator-tag",
            ),
            pytest.param(
                # A whole name in repository (the chart's old form): no registry prepended.
                {
                    "image": {"registry": "registry.corp.example"},
                    "sidecar": {"image": {"repository": "quay.io/team/podcache"}},
                },
                "registry.corp.example/podcache/podcache:0.1.0",
                "quay.io/team/podcache:0.1.0",
                id="sidecar-repository",
            ),
            pytest.param(
                {"sidecar": {"image": {"registry": "mirror.example/"}}},
                "ghcr.io/podcache/podcache:0.1.0",
                "mirror.example/podcache/podcache:0.1.0",
                id="sidecar-registry",
            ),
            pytest.param(
                # The component's tag replaces the global pair, digest included.
                {
                    "image": {"digest": "sha256:" + "c" * 64},
                    "operator": {"image": {"tag": "2.0.1"}},
                },
                "ghcr.io/podcache/podcache:2.0.1",
                "ghcr.io/podcache/podcache@sha256:" + "c" * 64,
                id="operator-tag-over-global-digest",
            ),
        ],
    )
    def test_components_override(self, values: dict[str, Any], operator: str, sidecar: str) -> None:
        images = _images(chart.render(values))
        assert (images[0], images[2]) == (operator, sidecar)

    def test_pull_policy_per_component(self) -> None:
        release = chart.render(
            {"image": {"pullPolicy": "Always"}, "sidecar": {"image": {"pullPolicy": "Never"}}}
        )
        assert _images(release)[1::2] == ("Always", "Never")

    @pytest.mark.parametrize(
        ("values", "needle"),
        [
            ({"image": {"repository": ""}}, "repository"),
            ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
            ({"image": {"digest": "latest"}}, "digest"),
            ({"sidecar": {"imagePullSecrets": [{"nmae": "regcred"}]}}, "nmae"),
        ],
    )
    def test_schema_refuses(self, values: dict[str, Any], needle: str) -> None:
        with (
            helm.Chart.load(chart.CHART_DIR) as loaded,
            pytest.raises(helm.HelmValuesError) as caught,
        ):
            loaded.validate_schema(values)
        assert needle in str(caught.value)


class TestImagePullSecrets:
    def test_none_by_default(self, default_release: chart.Release) -> None:
        pod = default_release.one("Deployment")["spec"]["template"]["spec"]
        assert "imagePullSecrets" not in pod
        operator = chart.container(default_release.one("Deployment"), "operator")
        assert chart.env_of(operator)["PODCACHE_SIDECAR_IMAGE_PULL_SECRETS"] == ""
        assert "imagePullSecrets" not in default_release.notes

    def test_operator_pod_gets_the_top_level_ones(
        self, releases: dict[str, chart.Release]
    ) -> None:
        release = releases["private-registry"]
        pod = release.one("Deployment")["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert release.one("ServiceAccount")["imagePullSecrets"] == [{"name": "regcred"}]

    def test_sidecar_ones_reach_the_operator(self, releases: dict[str, chart.Release]) -> None:
        settings = pytest.importorskip("podcache_operator.settings")
        release = releases["private-registry"]
        env = chart.env_of(chart.container(release.one("Deployment"), "operator"))
        assert env["PODCACHE_SIDECAR_IMAGE_PULL_SECRETS"] == "regcred,mirror"
        parsed = settings.Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
        assert parsed.sidecar.image_pull_secrets == ("regcred", "mirror")
        assert "imagePullSecrets regcred,mirror" in release.notes

    def test_sidecar_ones_are_not_the_operators(self) -> None:
        release = chart.render({"sidecar": {"imagePullSecrets": [{"name": "apps"}]}})
        pod = release.one("Deployment")["spec"]["template"]["spec"]
        assert "imagePullSecrets" not in pod


class TestWebhook:
    def test_webhook_configuration(self, default_release: chart.Release) -> None:
        (hook,) = default_release.one("MutatingWebhookConfiguration")["webhooks"]
        assert hook["objectSelector"] == {
            "matchExpressions": [{"key": "podcache.io/config", "operator": "Exists"}]
        }
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"][0]["resources"] == ["pods"]
        service = hook["clientConfig"]["service"]
        webhook_service = next(
            s
            for s in default_release.of_kind("Service")
            if s["metadata"]["name"] == service["name"]
        )
        assert webhook_service["spec"]["ports"][0]["port"] == service["port"]
        assert webhook_service["spec"]["ports"][0]["targetPort"] == "webhook"

    def test_path_is_the_operator_handler(self, default_release: chart.Release) -> None:
        webhook = pytest.importorskip("podcache_operator.webhook")
        (hook,) = default_release.one("MutatingWebhookConfiguration")["webhooks"]
        assert hook["clientConfig"]["service"]["path"] == f"/{webhook.HANDLER_ID}"

    def test_failure_policy_from_values(self, releases: dict[str, chart.Release]) -> None:
        (hook,) = releases["ha"].one("MutatingWebhookConfiguration")["webhooks"]
        assert hook["failurePolicy"] == "Fail"

    def test_self_signed_ca_signs_the_serving_certificate(
        self, default_release: chart.Release, tmp_path: Path
    ) -> None:
        """A real TLS handshake: the caBundle verifies the Secret's certificate for the
        name the API server dials (<service>.<namespace>.svc)."""
        secret = default_release.one("Secret")
        (hook,) = default_release.one("MutatingWebhookConfiguration")["webhooks"]
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        for key in ("ca.crt", "tls.crt", "tls.key"):
            (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        service = hook["clientConfig"]["service"]
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]

            def serve() -> None:
                connection, _ = listener.accept()
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_context.wrap_socket(
                    raw, server_hostname=f"{service['name']}.{service['namespace']}.svc"
                ) as tls,
            ):
                tls.sendall(b"x")
            thread.join(timeout=5)

    def test_tls_secret_is_what_the_operator_mounts(self, default_release: chart.Release) -> None:
        deployment = default_release.one("Deployment")
        volume = next(
            v
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "webhook-tls"
        )
        assert volume["secret"]["secretName"] == default_release.one("Secret")["metadata"]["name"]

    def test_cert_manager(self, releases: dict[str, chart.Release]) -> None:
        release = releases["cert-manager"]
        assert release.of_kind("Secret") == []
        certificate = next(c for c in release.of_kind("Certificate") if not c["spec"].get("isCA"))
        webhook = release.one("MutatingWebhookConfiguration")
        namespace, name = webhook["metadata"]["annotations"][
            "cert-manager.io/inject-ca-from"
        ].split("/")
        assert (namespace, name) == (chart.NAMESPACE, certificate["metadata"]["name"])
        assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
        deployment = release.one("Deployment")
        volume = next(
            v
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "webhook-tls"
        )
        assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
        assert "podcache-webhook.podcache-system.svc" in certificate["spec"]["dnsNames"]

    def test_cert_manager_ca_stays_across_renewals(
        self, releases: dict[str, chart.Release]
    ) -> None:
        """Regression (issue 9, defect 7): the serving certificate was self-signed with
        rotationPolicy Always, so the CA (the caBundle) changed at every renewal and
        admissions failed until the kubelet synced the Secret. Now a CA chain: the CA's
        key never rotates and it signs the serving certificate."""
        release = releases["cert-manager"]
        issuers = {i["metadata"]["name"]: i["spec"] for i in release.of_kind("Issuer")}
        certificates = {c["metadata"]["name"]: c["spec"] for c in release.of_kind("Certificate")}
        (ca_name,) = [name for name, spec in certificates.items() if spec.get("isCA")]
        ca = certificates.pop(ca_name)
        ((_, serving),) = certificates.items()
        assert ca["privateKey"]["rotationPolicy"] == "Never"
        assert "selfSigned" in issuers[ca["issuerRef"]["name"]]
        assert issuers[serving["issuerRef"]["name"]] == {"ca": {"secretName": ca["secretName"]}}

    def test_cert_manager_mode_renders_the_same_every_time(self) -> None:
        """The documented GitOps mode: nothing random in what `helm template` renders."""
        values = {"webhook": {"selfSigned": {"enabled": False}, "certManager": {"enabled": True}}}
        assert [o.obj for o in chart.render(values).objects] == [
            o.obj for o in chart.render(values).objects
        ]

    def test_cert_manager_with_existing_issuer(self, releases: dict[str, chart.Release]) -> None:
        release = releases["cert-manager-issuer"]
        assert release.of_kind("Issuer") == []
        assert release.one("Certificate")["spec"]["issuerRef"] == {
            "name": "corp-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }


class TestMonitoring:
    def test_off_by_default(self, default_release: chart.Release) -> None:
        assert "ServiceMonitor" not in default_release.kinds()
        assert "ConfigMap" not in default_release.kinds()

    def test_service_monitor_scrapes_the_metrics_service(
        self, releases: dict[str, chart.Release]
    ) -> None:
        release = releases["monitoring"]
        monitor = release.one("ServiceMonitor")
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        selected = [
            s
            for s in release.of_kind("Service")
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(selected) == 1
        assert monitor["spec"]["endpoints"][0]["port"] in {
            p["name"] for p in selected[0]["spec"]["ports"]
        }

    def test_grafana_dashboard(self, releases: dict[str, chart.Release]) -> None:
        config_map = releases["monitoring"].one("ConfigMap")
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "podcache"}
        dashboard = json.loads(config_map["data"]["podcache.json"])
        expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
        for metric in (
            "cache_hits_total",
            "cache_misses_total",
            "cache_requests_total",
            "cache_operation_duration_seconds_bucket",
            "cache_items",
            "lock_",
            "leader",
        ):
            assert metric in expressions
        assert "sum by (operation, status)" in expressions
        assert "histogram_quantile(0.99" in expressions


class TestSidecarDefaults:
    @staticmethod
    def _native_env(release: chart.Release) -> str:
        env = chart.env_of(chart.container(release.one("Deployment"), "operator"))
        return str(env["PODCACHE_SIDECAR_NATIVE"])

    @pytest.mark.parametrize(
        ("kube_version", "native"), [("v1.27.3", "false"), ("v1.29.0", "true"), ("v1.33.1", "true")]
    )
    def test_native_auto_follows_the_cluster_version(self, kube_version: str, native: str) -> None:
        release = chart.render(kube_version=kube_version)
        assert self._native_env(release) == native
        assert "WARNING" not in release.notes
        expected = "native sidecar" if native == "true" else "regular container"
        assert f"({expected})" in release.notes

    def test_native_forced_on_an_old_cluster_warns(self) -> None:
        release = chart.render({"sidecar": {"native": True}}, kube_version="v1.27.3")
        assert self._native_env(release) == "true"
        assert "WARNING: sidecar.native=true on Kubernetes v1.27.3" in release.notes

    def test_native_forced_off(self) -> None:
        release = chart.render({"sidecar": {"native": False}}, kube_version="v1.33.1")
        assert self._native_env(release) == "false"
        assert "Jobs" in release.notes


class TestIncompatibleValues:
    @pytest.mark.parametrize(
        ("values", "message"),
        [
            (
                {"webhook": {"certManager": {"enabled": True}}},
                "webhook.selfSigned.enabled and webhook.certManager.enabled are both true",
            ),
            ({"webhook": {"selfSigned": {"enabled": False}}}, "the admission webhook needs TLS"),
            ({"operator": {"replicaCount": 0}}, "operator.replicaCount must be at least 1"),
            (
                {"operator": {"podDisruptionBudget": {"minAvailable": 1}}},
                "set minAvailable or maxUnavailable, not both",
            ),
            (
                {"operator": {"healthPort": 9443}},
                "webhook.port and operator.healthPort must differ",
            ),
        ],
    )
    def test_fails_with_clear_message(self, values: dict[str, Any], message: str) -> None:
        with pytest.raises(helm.HelmRenderError) as caught:
            chart.render(values)
        assert message in str(caught.value)


class TestNotes:
    def test_order_warnings_deployed_next_steps(self) -> None:
        notes = chart.render({"webhook": {"failurePolicy": "Fail"}}).notes
        warning, deployed, steps = (
            notes.index("WARNING: webhook.failurePolicy=Fail"),
            notes.index("is installed as release"),
            notes.index("Next steps"),
        )
        assert warning < deployed < steps

    def test_ha_is_described(self, releases: dict[str, chart.Release]) -> None:
        assert "3 replica(s), one active through kopf peering" in releases["ha"].notes

    def test_no_warning_by_default(self, default_release: chart.Release) -> None:
        assert "WARNING" not in default_release.notes


class TestNetworkPolicy:
    """Issue 9, defect 11: the webhook answers any caller; the NetworkPolicy limits who."""

    def test_off_by_default(self, default_release: chart.Release) -> None:
        assert "NetworkPolicy" not in default_release.kinds()

    def test_webhook_from_the_apiserver_metrics_from_monitoring(self) -> None:
        release = chart.render(
            {
                "networkPolicy": {
                    "enabled": True,
                    "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                }
            }
        )
        policy = release.one("NetworkPolicy")["spec"]
        pod = release.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= pod.items()
        assert policy["policyTypes"] == ["Ingress"]
        webhook, metrics = policy["ingress"]
        assert webhook == {
            "from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
            "ports": [{"port": 9443, "protocol": "TCP"}],
        }
        assert metrics["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
        assert metrics["ports"] == [{"port": 9091, "protocol": "TCP"}]

    def test_needs_the_apiserver_addresses(self) -> None:
        with pytest.raises(Exception, match=r"networkPolicy\.webhookFrom"):
            chart.render({"networkPolicy": {"enabled": True}})
