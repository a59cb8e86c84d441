"""Tests of what users deploy: the Helm chart, the plain manifests, the image and the wheel."""
