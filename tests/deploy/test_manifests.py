"""manifests/ is what scripts/render-manifests writes from the chart, byte for byte.

Aspects:
- the committed files equal a fresh render (so a chart change without re-running the
  script fails here, with a diff);
- the script is deterministic (two renders give the same bytes) and --check agrees;
- the plain manifests hold no private key (TLS comes from cert-manager per cluster),
  the CRDs sit in their own file, and everything else runs in one namespace.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.deploy import chart

SCRIPT = chart.ROOT / "scripts" / "render-manifests"


def _render_to(directory: Path) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(directory)], check=True, timeout=60
    )


def test_manifests_are_up_to_date(tmp_path: Path) -> None:
    _render_to(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in chart.MANIFESTS_DIR.iterdir() if p.is_file())
    assert written == committed
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, chart.MANIFESTS_DIR, written, shallow=False)
    assert (mismatch, errors) == ([], []), "manifests/ is stale: run scripts/render-manifests"


def test_render_is_deterministic_and_check_agrees(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _render_to(first)
    _render_to(second)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes()
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--output", str(first)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (first / "podcache.yaml").write_text((first / "podcache.yaml").read_text() + "# edited\n")
    stale = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--output", str(first)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stale.returncode == 1
    assert "-# edited" in stale.stdout
    assert "stale" in stale.stderr


def test_no_blank_or_trailing_space_lines_from_templates() -> None:
    """Whitespace left by template actions shows the chart's output is tidy."""
    for path in chart.MANIFESTS_DIR.glob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert line == line.rstrip(), f"{path.name}:{number} ends in whitespace"


def test_plain_manifests_layout() -> None:
    crds = list(chart.load_yaml_documents(chart.MANIFESTS_DIR / "crds.yaml"))
    assert {obj["kind"] for obj in crds} == {"CustomResourceDefinition"}
    rest = list(chart.load_yaml_documents(chart.MANIFESTS_DIR / "podcache.yaml"))
    assert rest[0]["kind"] == "Namespace"
    namespace = rest[0]["metadata"]["name"]
    for obj in rest[1:]:
        namespaced = obj["kind"] not in {
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ClusterKopfPeering",
        }
        assert obj["metadata"].get("namespace") == (namespace if namespaced else None), obj["kind"]
    text = (chart.MANIFESTS_DIR / "podcache.yaml").read_text()
    assert "PRIVATE KEY" not in text
    assert "LS0tLS1CRUdJTi" not in text  # base64 of "-----BEGIN"
    assert any(obj["kind"] == "Certificate" for obj in rest)
