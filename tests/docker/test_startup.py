"""How the compose stack's containers start: every Ray node through docker/ray-start, with an
object store that fits the container's /dev/shm (Ray's own default, 30% of the host's RAM,
falls back to disk), and every service others wait for with its healthcheck in compose."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "ray-start"
RAY_SERVICES = ("ray-head", "ray-worker", "ray-cpu-worker")


def run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the script with a fake ``ray`` that records its arguments; /dev/shm is tmp_path."""
    bin_dir, record = tmp_path / "bin", tmp_path / "ray-args"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "ray"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    shm = tmp_path / "shm"
    shm.mkdir(exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_OBJECT_STORE_BYTES"}
    full_env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SMARTMIXED_SHM_DIR=str(shm), **env)
    proc = subprocess.run(["sh", str(SCRIPT), *args], env=full_env, capture_output=True,
                          text=True, timeout=30)
    return proc, (record.read_text().splitlines() if record.exists() else [])


def test_object_store_is_nine_tenths_of_free_shm(tmp_path):
    proc, args = run(tmp_path, "--head", "--block")
    assert proc.returncode == 0, proc.stderr
    st = os.statvfs(tmp_path / "shm")
    free = st.f_bavail * st.f_frsize
    assert args[0] == "start" and args[-2:] == ["--head", "--block"]
    (flag,) = [a for a in args if a.startswith("--object-store-memory=")]
    size = int(flag.split("=")[1])
    assert size <= free  # Ray keeps the store in /dev/shm only when it fits
    assert size == pytest.approx(0.9 * free, rel=0.01)


def test_explicit_size_wins(tmp_path):
    proc, args = run(tmp_path, "--address=ray-head:6379", RAY_OBJECT_STORE_BYTES="123456789")
    assert proc.returncode == 0, proc.stderr
    assert args == ["start", "--object-store-memory=123456789", "--address=ray-head:6379"]
    proc, args = run(tmp_path, "--head", "--object-store-memory=99999999")
    assert args == ["start", "--head", "--object-store-memory=99999999"]  # passed through


def test_too_small_a_store_is_one_error_line_and_ray_never_starts(tmp_path):
    proc, args = run(tmp_path, "--head", RAY_OBJECT_STORE_BYTES="1000")
    assert proc.returncode == 2 and args == []
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("ray-start: error: RAY_OBJECT_STORE_BYTES: ")


def test_every_ray_node_starts_through_the_script():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    for name in RAY_SERVICES:
        assert compose["services"][name]["command"][0] == "ray-start", name
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "docker/ray-start /usr/local/bin/ray-start" in dockerfile
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!docker/ray-start" in ignore  # else the build context lacks it


def test_every_awaited_service_has_its_healthcheck_in_compose():
    """``depends_on: {x: {condition: service_healthy}}`` needs x's healthcheck in compose:
    an image's HEALTHCHECK is dropped by podman/buildah's default (OCI) image format."""
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    awaited = {name for svc in services.values()
               for name, dep in (svc.get("depends_on") or {}).items()
               if isinstance(dep, dict) and dep.get("condition") == "service_healthy"}
    assert awaited >= {"postgres", "mlflow", "ray-head"}
    for name in awaited:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
