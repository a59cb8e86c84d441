"""The ``podcache-operator`` entry point and its settings.

Aspects: ``--help``, ``--version``; settings read from ``PODCACHE_*`` variables with typed errors
naming the variable; the startup ``configure`` handler puts kopf's bookkeeping in
``podcache.io`` annotations and applies our timeouts, peering, event posting and
webhook server (or none when the webhook is off); a bad environment exits with 2.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import kopf
import pytest

from podcache_operator import main, settings, webhook


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--namespace", "--all-namespaces", "--liveness", "--verbose", "--standalone"):
        assert flag in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (issue 9, defect 3): there was no --version."""
    with pytest.raises(SystemExit) as exited:
        main.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"podcache-operator {settings.VERSION}"


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        main.parse_args(["-n", "a", "-A"])
    assert main.parse_args(["-n", "a", "-n", "team-*"]).namespace == ["a", "team-*"]


def test_bad_environment_exits_with_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PODCACHE_SIDECAR_NATIVE", "maybe")
    assert main.main([]) == 2
    assert "PODCACHE_SIDECAR_NATIVE='maybe': expected true or false" in capsys.readouterr().err


class TestSettingsFromEnv:
    def test_defaults(self) -> None:
        config = settings.Settings.from_env({})
        assert config == settings.Settings()
        assert config.webhook.managed is None  # the chart ships the webhook configuration

    def test_values(self) -> None:
        config = settings.Settings.from_env(
            {
                "PODCACHE_SIDECAR_IMAGE": "r/podcache:9",
                "PODCACHE_SIDECAR_NATIVE": "false",
                "PODCACHE_SIDECAR_METRICS_PORT": "9191",
                "PODCACHE_WEBHOOK_PORT": "8443",
                "PODCACHE_WEBHOOK_CERT_FILE": "/t/tls.crt",
                "PODCACHE_WEBHOOK_KEY_FILE": "/t/tls.key",
                "PODCACHE_WEBHOOK_MANAGED": "",
                "PODCACHE_REJECT_MISSING_CONFIG": "yes",
                "PODCACHE_WATCH_SERVER_TIMEOUT": "120",
                "PODCACHE_STANDALONE": "1",
                "PODCACHE_LIVENESS_ENDPOINT": "",
                "PODCACHE_LOG_LEVEL": "debug",
                "PODCACHE_SIDECAR_IMAGE_PULL_SECRETS": " regcred, mirror.corp ,regcred",
            }
        )
        assert config.sidecar.image == "r/podcache:9"
        assert config.sidecar.image_pull_secrets == ("regcred", "mirror.corp")
        assert config.sidecar.native is False
        assert config.sidecar.metrics_port == 9191
        assert config.webhook.port == 8443
        assert config.webhook.managed is None  # set but empty: the chart owns the configuration
        assert config.webhook.reject_missing_config is True
        assert config.watch.server_timeout == 120
        assert config.peering.standalone is True
        assert config.liveness_endpoint is None
        assert config.log_level == "debug"

    @pytest.mark.parametrize(
        ("env", "words"),
        [
            ({"PODCACHE_SIDECAR_METRICS_PORT": "http"}, "PODCACHE_SIDECAR_METRICS_PORT='http'"),
            ({"PODCACHE_SIDECAR_METRICS_PORT": "70000"}, "out of range"),
            ({"PODCACHE_WATCH_SERVER_TIMEOUT": "-1"}, "out of range"),
            # The apiserver parses timeoutSeconds as an integer; 1.5 would break every watch.
            ({"PODCACHE_WATCH_SERVER_TIMEOUT": "1.5"}, "expected a whole number"),
            ({"PODCACHE_SIDECAR_IMAGE_PULL_POLICY": "Sometimes"}, "use one of Always"),
            ({"PODCACHE_WEBHOOK_CERT_FILE": "/t/tls.crt"}, "go together"),
            ({"PODCACHE_LOG_LEVEL": "loud"}, "PODCACHE_LOG_LEVEL"),
            (
                {"PODCACHE_SIDECAR_IMAGE_PULL_SECRETS": "regcred,Reg Cred"},
                "PODCACHE_SIDECAR_IMAGE_PULL_SECRETS='regcred,Reg Cred': 'Reg Cred' is not",
            ),
            ({"PODCACHE_SIDECAR_IMAGE_PULL_SECRETS": "regcred,,x"}, "'' is not"),
            ({"PODCACHE_WEBHOOK_MANAGED": "podcache.io"}, "needs PODCACHE_WEBHOOK_HOST"),
        ],
    )
    def test_errors_name_the_variable(self, env: dict[str, str], words: str) -> None:
        with pytest.raises(settings.SettingsError, match=words.replace("(", r"\(")):
            settings.Settings.from_env(env)


class TestConfigure:
    @staticmethod
    def configure(config: settings.Settings) -> tuple[kopf.OperatorSettings, kopf.Memo]:
        kopf_settings = kopf.OperatorSettings()
        memo = kopf.Memo(config=config)
        main.configure(settings=kopf_settings, memo=memo, logger=logging.getLogger("test"))
        return kopf_settings, memo

    def test_bookkeeping_goes_into_status_kopf(self) -> None:
        kopf_settings, memo = self.configure(settings.Settings())
        progress = kopf_settings.persistence.progress_storage
        diffbase = kopf_settings.persistence.diffbase_storage
        assert isinstance(progress, kopf.StatusProgressStorage)
        assert progress.field == ("status", "kopf", "progress")
        assert isinstance(diffbase, kopf.StatusDiffBaseStorage)
        assert diffbase.field == ("status", "kopf", "last-handled-configuration")
        assert kopf_settings.persistence.finalizer == "podcache.io/finalizer"
        assert memo["kopf_settings"] is kopf_settings
        assert memo["state"].pod_counts == {}

    def test_timeouts_peering_posting(self) -> None:
        config = settings.Settings(
            watch=settings.WatchSettings(
                server_timeout=11, client_timeout=12, request_timeout=13, error_backoffs=(0.5,)
            ),
            peering=settings.PeeringSettings(name="mine", priority=7),
            post_events=False,
        )
        kopf_settings, _ = self.configure(config)
        assert kopf_settings.watching.server_timeout == 11
        assert kopf_settings.watching.client_timeout == 12
        assert kopf_settings.networking.request_timeout == 13
        assert kopf_settings.networking.error_backoffs == (0.5,)
        assert (kopf_settings.peering.name, kopf_settings.peering.priority) == ("mine", 7)
        assert kopf_settings.peering.standalone is False
        assert kopf_settings.peering.mandatory is True  # as `kopf run --peering NAME`
        assert kopf_settings.posting.enabled is False

    def test_replicas_draw_distinct_priorities_unless_one_is_given(self) -> None:
        """kopf pauses every replica sharing the top priority: equal replicas must differ."""
        drawn = {self.configure(settings.Settings())[0].peering.priority for _ in range(5)}
        assert len(drawn) == 5
        assert all(1 <= priority < 2**53 for priority in drawn)
        given = settings.Settings.from_env({"PODCACHE_PEERING_PRIORITY": "-3"})
        assert self.configure(given)[0].peering.priority == -3

    def test_a_replica_started_later_outranks_every_earlier_one(self) -> None:
        """A dead replica's record (kept for kopf's lifetime) must not pause its successor:
        a millisecond later, every draw is above every earlier draw, whatever the tiebreak."""
        peering = settings.PeeringSettings()
        start = settings.PRIORITY_EPOCH + 60 * 86400 * 365
        earlier = [peering.effective_priority(now=start) for _ in range(200)]
        later = [peering.effective_priority(now=start + 0.001) for _ in range(200)]
        assert min(later) > max(earlier)
        assert max(later) < 2**53

    def test_webhook_server(self, tmp_path: Path) -> None:
        config = settings.Settings(
            webhook=settings.WebhookSettings(
                port=9999,
                host="op.ns.svc",
                cert_file=str(tmp_path / "c"),
                key_file=str(tmp_path / "k"),
                managed=None,
            )
        )
        kopf_settings, _ = self.configure(config)
        server = kopf_settings.admission.server
        assert isinstance(server, webhook.AdmissionServer)
        assert (server.port, server.host, server.certfile) == (
            9999,
            "op.ns.svc",
            str(tmp_path / "c"),
        )
        assert kopf_settings.admission.managed is None

    def test_webhook_off(self) -> None:
        kopf_settings, _ = self.configure(
            settings.Settings(webhook=settings.WebhookSettings(enabled=False))
        )
        assert kopf_settings.admission.server is main._no_webhooks
        assert kopf_settings.admission.managed is None

    def test_no_certificate_turns_the_webhook_off_with_a_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Regression (issue 9, defect 3): with the defaults (no certificate files) kopf
        needed certbuilder for a self-signed certificate and the operator died."""
        if importlib.util.find_spec("certbuilder") is not None:
            pytest.skip("certbuilder is installed: kopf makes a self-signed certificate")
        with caplog.at_level(logging.WARNING):
            kopf_settings, _ = self.configure(settings.Settings())
        assert kopf_settings.admission.server is main._no_webhooks
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "admission webhook is OFF" in warning
        assert "PODCACHE_WEBHOOK_CERT_FILE" in warning

    def test_crd_watch_names_the_servicemonitor_crd(self) -> None:
        """Regression (issue 9, defect 11): every CRD in the cluster was watched."""
        kopf_settings, _ = self.configure(settings.Settings())
        crds = kopf.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert list(kopf_settings.watching.field_selectors.collect(crds)) == [
            "metadata.name=servicemonitors.monitoring.coreos.com"
        ]

    def test_reads_the_environment_when_not_given_settings(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PODCACHE_PEERING_NAME", "from-env")
        kopf_settings = kopf.OperatorSettings()
        memo = kopf.Memo()
        main.configure(settings=kopf_settings, memo=memo, logger=logging.getLogger("test"))
        assert memo["config"].peering.name == "from-env"
        assert kopf_settings.peering.name == "from-env"
