"""Images for the e2e node, made here because no registry can be pulled from.

``build()`` runs ``scripts/build-image`` (the project's Dockerfile built with podman;
cached by content, so a warm run costs a second). ``pause_archive()`` wraps the pause
binary from ``scripts/build-node`` in a one-file image named as containerd's
``sandbox_image``. Images move to containerd as docker archives (``podman save``), each
saved once per content into the cache folder, then ``ctr images import``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
from pathlib import Path

from tests.controlplane.cluster import ROOT

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CONTAINERS_CONF = ROOT / "e2e" / "image" / "containers.conf"


class ImageUnavailable(RuntimeError):
    """The image could not be built or saved; the message holds the tool's output."""


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(os.environ.get("PODCACHE_IMAGE_CACHE", f"{base}/podcache/image"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run(argv: list[str], timeout: float) -> str:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageUnavailable(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise ImageUnavailable(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def build(*tags: str) -> str:
    """The project's image (built when its content changed); its content-keyed reference."""
    argv = ["bash", str(ROOT / "scripts" / "build-image")]
    for tag in tags:
        argv += ["--tag", tag]
    return _run(argv, timeout=1800).strip().splitlines()[-1]


def project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise ImageUnavailable("no version in pyproject.toml")


def podman(*args: str, timeout: float = 300) -> str:
    return _run(["podman", "--runtime", "runc", *args], timeout)


def save(reference: str) -> Path:
    """A docker archive of ``reference``, named in the archive as it is here; saved once
    per image, and only the newest few archives of one repository are kept (each of the
    project's is ~290 MB, and every source change makes a new image)."""
    image_id = podman("image", "inspect", "--format", "{{.Id}}", reference).strip()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", reference.rsplit(":", 1)[0])
    archive = cache_folder() / f"archive-{slug}-{image_id[:16]}.tar"
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        podman("save", "--format", "docker-archive", "--output", str(partial), reference)
        partial.rename(archive)
        older = sorted(
            (a for a in archive.parent.glob(f"archive-{slug}-*.tar") if a != archive),
            key=lambda a: a.stat().st_mtime,
            reverse=True,
        )
        for stale in older[2:]:  # a concurrent run may still import the newest others
            stale.unlink(missing_ok=True)
    return archive


def pause_archive(pause_binary: Path) -> Path:
    """The sandbox image: the pause binary alone, as ``registry.k8s.io/pause:3.10``."""
    digest = hashlib.sha256(pause_binary.read_bytes()).hexdigest()[:16]
    reference = f"{PAUSE_IMAGE.rsplit(':', 1)[0]}:3.10-podcache-{digest}"
    exists = subprocess.run(
        ["podman", "image", "exists", reference],
        env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
        check=False,
    )
    if exists.returncode != 0:
        rootfs = cache_folder() / f"pause-{digest}.tar"
        with tarfile.open(rootfs, "w") as tar:
            info = tar.gettarinfo(str(pause_binary), arcname="pause")
            info.uid = info.gid = 0
            info.mode = 0o755
            with pause_binary.open("rb") as data:
                tar.addfile(info, data)
        podman("import", "--change", 'ENTRYPOINT ["/pause"]', str(rootfs), reference)
        rootfs.unlink()
    podman("tag", reference, PAUSE_IMAGE)
    return save(PAUSE_IMAGE)
