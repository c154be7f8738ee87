"""docker-compose.yml describes the topology the process tests exercise.

No Docker engine runs in CI, so the file is checked structurally, and the job service's
command is parsed by the real ``mfdask`` argument parser.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_share_one_image_and_the_data_volume():
    services = _compose()["services"]
    assert {"scheduler", "worker", "job"} <= set(services)
    images = {s["image"] for s in services.values()}
    assert images == {"mfdask:latest"}
    for name, service in services.items():
        assert "./data:/data" in service["volumes"], name
        env = service["environment"]
        assert env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1", name


def test_workers_join_the_scheduler_and_ports_are_published():
    services = _compose()["services"]
    scheduler, worker = services["scheduler"], services["worker"]
    assert "8786:8786" in scheduler["ports"] and "8787:8787" in scheduler["ports"]
    assert "tcp://scheduler:8786" in worker["command"]
    assert "--memory-limit" in worker["command"] and "--nthreads" in worker["command"]
    assert worker["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert "healthcheck" in scheduler and "healthcheck" in worker


def test_job_service_runs_a_real_mfdask_command():
    from mfdask.cli import build_parser

    command = _compose()["services"]["job"]["command"]
    assert command[0] == "mfdask"
    args = build_parser().parse_args(command[1:])
    assert args.scheduler == "tcp://scheduler:8786"


def test_dockerfile_installs_the_package_and_pins_threads():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in text
    assert "OMP_NUM_THREADS=1" in text and "OPENBLAS_NUM_THREADS=1" in text
