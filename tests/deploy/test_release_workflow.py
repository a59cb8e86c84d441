"""The release workflow (.github/workflows/release.yml) and its version check.

It cannot run here (it needs GitHub's runners and ghcr.io), so what matters is checked
on the file itself:
- it runs on version tags only, and first checks the tag against pyproject.toml and
  Chart.yaml with scripts/check-release-version, which is run here for real (a matching
  tag passes and prints the outputs the jobs use; a tag that disagrees with any of the
  three declared versions, or is not v<SemVer>, fails naming what disagrees);
- every job that publishes depends on that check;
- the image is built for linux/amd64 and linux/arm64 with buildx under QEMU, pushed once
  under a candidate tag to the repository the chart installs from, scanned for fixable
  HIGH/CRITICAL vulnerabilities on both platforms (failing the run), and only then
  tagged with the version, by digest;
- the chart is packaged and pushed to an OCI registry after the image is published;
- write access to packages only where something is pushed;
- actionlint finds nothing (built from the Go module proxy like the control plane's
  binaries; skips without Go, fails under CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.availability import unavailable
from tests.deploy import chart

WORKFLOW = chart.ROOT / ".github" / "workflows" / "release.yml"
CHECK = chart.ROOT / "scripts" / "check-release-version"
ACTIONLINT_VERSION = "v1.7.12"
PLATFORMS = {"linux/amd64", "linux/arm64"}


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    # YAML 1.1 reads the bare key `on` as true.
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return loaded


def jobs(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(workflow["jobs"])


def needs(job: dict[str, Any]) -> set[str]:
    value = job.get("needs", [])
    return {value} if isinstance(value, str) else set(value)


def upstream(workflow: dict[str, Any], name: str) -> set[str]:
    """Every job ``name`` waits for, directly or not."""
    found: set[str] = set()
    pending = [name]
    while pending:
        for dependency in needs(jobs(workflow)[pending.pop()]):
            if dependency not in found:
                found.add(dependency)
                pending.append(dependency)
    return found


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if str(step.get("uses", "")).startswith(action + "@")]


def runs(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def github_filter(pattern: str) -> re.Pattern[str]:
    """GitHub's filter pattern syntax, as far as this workflow uses it (*, +, [...])."""
    regex = ""
    for char in pattern:
        regex += {"*": "[^/]*", ".": r"\."}.get(char, char)
    return re.compile(regex)


def project_version() -> str:
    return str(tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["project"]["version"])


def check(tag: str, root: Path = chart.ROOT) -> subprocess.CompletedProcess[str]:
    script = root / "scripts" / "check-release-version"
    return subprocess.run(
        [sys.executable, str(script), tag], capture_output=True, text=True, timeout=30
    )


class TestVersionCheck:
    def test_the_declared_version_passes(self) -> None:
        version = project_version()
        result = check(f"v{version}")
        assert result.returncode == 0, result.stderr
        major, minor, _ = version.split(".")
        assert result.stdout.splitlines() == [
            f"version={version}",
            f"minor={major}.{minor}",
            "prerelease=false",
        ]

    @pytest.mark.parametrize("tag", ["v99.0.0", "v0.1.0-rc.1"])
    def test_another_version_fails_naming_each_file(self, tag: str) -> None:
        result = check(tag)
        assert result.returncode == 1
        assert "pyproject.toml project.version" in result.stderr
        assert "Chart.yaml version" in result.stderr
        assert "Chart.yaml appVersion" in result.stderr

    @pytest.mark.parametrize("tag", ["0.1.0", "v0.1", "v0.1.0.1", "v01.1.0", "release-0.1.0"])
    def test_not_a_version_tag(self, tag: str) -> None:
        result = check(tag)
        assert result.returncode == 1
        assert "is not v<MAJOR>.<MINOR>.<PATCH>" in result.stderr

    def _copy(self, tmp_path: Path, *, pyproject: str, chart_version: str, app: str) -> Path:
        (tmp_path / "scripts").mkdir()
        shutil.copy(CHECK, tmp_path / "scripts")
        (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "podcache"\n{pyproject}\n')
        charts = tmp_path / "charts" / "podcache"
        charts.mkdir(parents=True)
        original = (chart.CHART_DIR / "Chart.yaml").read_text()
        edited = re.sub(r"(?m)^version: .*$", f"version: {chart_version}", original)
        edited = re.sub(r"(?m)^appVersion: .*$", f"appVersion: {app}", edited)
        (charts / "Chart.yaml").write_text(edited)
        return tmp_path

    def test_only_the_chart_version_lags(self, tmp_path: Path) -> None:
        root = self._copy(
            tmp_path, pyproject='version = "1.2.0"', chart_version="1.1.0", app='"1.2.0"'
        )
        result = check("v1.2.0", root)
        assert result.returncode == 1
        assert result.stderr.count("check-release-version: tag v1.2.0 releases") == 1
        assert "Chart.yaml version is 1.1.0" in result.stderr

    def test_a_prerelease_everywhere_passes(self, tmp_path: Path) -> None:
        root = self._copy(
            tmp_path,
            pyproject='version = "1.2.0-rc.1"',
            chart_version="1.2.0-rc.1",
            app="'1.2.0-rc.1'",
        )
        result = check("v1.2.0-rc.1", root)
        assert result.returncode == 0, result.stderr
        assert "prerelease=true" in result.stdout.splitlines()


class TestWorkflow:
    def test_runs_on_version_tags_only(self, workflow: dict[str, Any]) -> None:
        assert set(workflow["on"]) == {"push"}
        push = workflow["on"]["push"]
        assert set(push) == {"tags"}
        patterns = [github_filter(pattern) for pattern in push["tags"]]
        for tag in ("v0.1.0", "v1.10.2", "v1.2.0-rc.1"):
            assert any(p.fullmatch(tag) for p in patterns), tag
        for tag in ("latest", "0.1.0", "vnext", "chart-0.1.0"):
            assert not any(p.fullmatch(tag) for p in patterns), tag

    def test_the_tag_is_checked_before_anything_is_pushed(
        self, workflow: dict[str, Any]
    ) -> None:
        version = jobs(workflow)["version"]
        assert 'scripts/check-release-version "$GITHUB_REF_NAME"' in runs(version)
        assert "$GITHUB_OUTPUT" in runs(version)
        assert set(version["outputs"]) >= {"version", "minor", "prerelease"}
        for name in jobs(workflow):
            if name != "version":
                assert "version" in upstream(workflow, name), name

    def test_image_is_built_for_both_platforms(self, workflow: dict[str, Any]) -> None:
        image = jobs(workflow)["image"]
        uses = [str(step.get("uses", "")).split("@")[0] for step in image["steps"]]
        build_at = uses.index("docker/build-push-action")
        assert uses.index("docker/setup-qemu-action") < build_at
        assert uses.index("docker/setup-buildx-action") < build_at
        assert uses.index("docker/login-action") < build_at
        (build,) = steps_using(image, "docker/build-push-action")
        platforms = build["with"]["platforms"]
        if platforms == "${{ env.PLATFORMS }}":
            platforms = workflow["env"]["PLATFORMS"]
        assert set(platforms.split(",")) == PLATFORMS
        assert build["with"]["push"] is True
        assert "VERSION=${{ needs.version.outputs.version }}" in build["with"]["build-args"]
        assert build["with"]["tags"] == "${{ env.IMAGE }}:candidate-${{ github.sha }}"
        assert image["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"

    def test_image_goes_where_the_chart_pulls_from(self, workflow: dict[str, Any]) -> None:
        values = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
        default = f"{values['image']['registry']}/{values['image']['repository']}"
        assert workflow["env"]["IMAGE"] == default

    def test_both_platforms_are_scanned_and_fixable_findings_fail(
        self, workflow: dict[str, Any]
    ) -> None:
        scan = jobs(workflow)["scan"]
        assert needs(scan) == {"image"}
        assert set(scan["strategy"]["matrix"]["platform"]) == PLATFORMS
        (trivy,) = steps_using(scan, "aquasecurity/trivy-action")
        assert trivy["with"]["image-ref"] == "${{ env.IMAGE }}@${{ needs.image.outputs.digest }}"
        assert set(trivy["with"]["severity"].split(",")) == {"HIGH", "CRITICAL"}
        assert trivy["with"]["ignore-unfixed"] is True
        assert str(trivy["with"]["exit-code"]) == "1"
        assert trivy["env"]["TRIVY_PLATFORM"] == "${{ matrix.platform }}"

    def test_version_tags_only_after_the_scan(self, workflow: dict[str, Any]) -> None:
        publish = jobs(workflow)["publish"]
        assert {"scan", "image", "version"} <= needs(publish)
        script = runs(publish)
        assert 'docker buildx imagetools create "${tags[@]}" "$IMAGE@$DIGEST"' in script
        assert '--tag "$IMAGE:$VERSION"' in script
        env = next(step["env"] for step in publish["steps"] if "run" in step)
        assert env["VERSION"] == "${{ needs.version.outputs.version }}"
        assert env["DIGEST"] == "${{ needs.image.outputs.digest }}"
        # No job but publish gives the image a version tag.
        for name, job in jobs(workflow).items():
            if name != "publish":
                assert "$IMAGE:$VERSION" not in runs(job), name

    def test_chart_is_packaged_and_pushed_as_oci(self, workflow: dict[str, Any]) -> None:
        chart_job = jobs(workflow)["chart"]
        assert "publish" in needs(chart_job)  # never a chart whose image is not there
        assert chart_job["env"]["VERSION"] == "${{ needs.version.outputs.version }}"
        script = runs(chart_job)
        assert "helm package charts/podcache --destination dist" in script
        assert 'test -f "dist/podcache-$VERSION.tgz"' in script
        assert "helm registry login ghcr.io" in script
        assert "--password-stdin" in script
        assert 'helm push "dist/podcache-$VERSION.tgz" "$CHART_REPOSITORY"' in script
        assert workflow["env"]["CHART_REPOSITORY"].startswith("oci://ghcr.io/")
        assert script.index("helm package") < script.index("helm push")

    def test_packages_write_only_where_something_is_pushed(
        self, workflow: dict[str, Any]
    ) -> None:
        assert workflow["permissions"] == {"contents": "read"}
        writers = {
            name
            for name, job in jobs(workflow).items()
            if (job.get("permissions") or {}).get("packages") == "write"
        }
        assert writers == {"image", "publish", "chart"}

    def test_no_expression_is_pasted_into_a_shell_script(self, workflow: dict[str, Any]) -> None:
        """`${{ }}` inside `run:` is text substitution (script injection); env is not."""
        for name, job in jobs(workflow).items():
            assert "${{" not in runs(job), name


def actionlint() -> str:
    found = os.environ.get("PODCACHE_ACTIONLINT") or shutil.which("actionlint")
    if found:
        return found
    cache = Path(
        os.environ.get("PODCACHE_ACTIONLINT_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "podcache"
        / "actionlint"
        / ACTIONLINT_VERSION
    )
    binary = cache / "actionlint"
    if binary.exists():
        return str(binary)
    go = shutil.which("go")
    if go is None:
        unavailable("actionlint", "neither actionlint nor Go (to build it) is on PATH")
    result = subprocess.run(
        [go, "install", f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}"],
        env={**os.environ, "GOBIN": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 or not binary.exists():
        unavailable("actionlint", f"go install failed: {result.stderr.strip()[-500:]}")
    return str(binary)


@pytest.mark.timeout(700)
def test_actionlint_is_clean() -> None:
    result = subprocess.run(
        [actionlint(), "-no-color", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=chart.ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
