"""docker-compose.yml describes the production stack (parsed here; no Docker engine runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def environment(service: dict) -> dict:
    return service.get("environment", {})


def test_postgres_keeps_its_data_on_a_volume_and_reports_health(services):
    postgres = services["postgres"]

    assert postgres["image"].startswith("postgres:")
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_redis_runs_append_only(services):
    redis = services["redis"]

    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "healthcheck" in redis and redis["volumes"]


def test_migrate_runs_once_after_postgres_is_healthy(services):
    migrate = services["migrate"]

    assert migrate["command"] == ["styleq", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_api_is_gunicorn_on_the_app_factory_after_migration(services):
    api = services["api"]

    assert api["command"][0] == "gunicorn" and api["command"][-1] == "api:create_app()"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_each_worker_reserves_its_own_gpu_and_shares_the_image_volume(services):
    workers = {name: service for name, service in services.items() if name.startswith("worker")}
    assert len(workers) >= 2

    reserved = []
    for name, worker in workers.items():
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
        reserved += devices[0]["device_ids"]
        assert worker["command"][:2] == ["styleq", "worker"], name
        assert "healthcheck" in worker, name
        assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert any(volume.startswith("images:") for volume in worker["volumes"]), name
    assert len(reserved) == len(set(reserved)), "two workers share a GPU"
    assert any(volume.startswith("images:") for volume in services["api"]["volumes"])


def test_every_styleq_service_points_at_postgres_and_redis(services):
    for name in ("migrate", "api", "worker-gpu0", "worker-gpu1"):
        settings = environment(services[name])
        assert settings["STYLEQ_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert settings["STYLEQ_BROKER_URL"].startswith("redis://redis:"), name
        # Every API container signs dashboard cookies with one secret, which compose refuses to start without.
        assert settings["STYLEQ_SECRET_KEY"].startswith("${STYLEQ_SECRET_KEY:?"), name


def test_flower_is_optional(services):
    assert services["flower"]["profiles"] == ["monitoring"]
    assert "flower" in services["flower"]["command"]


def test_prometheus_scrapes_the_api_and_every_worker_on_its_metrics_port(services):
    prometheus = services["prometheus"]
    scrape = yaml.safe_load((REPO / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: [target for group in job["static_configs"] for target in group["targets"]] for job in scrape}

    assert prometheus["profiles"] == ["monitoring"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    api_port = next(argument for argument in services["api"]["command"] if argument.startswith("--bind=")).rpartition(":")[2]
    assert targets["styleq-api"] == [f"api:{api_port}"]
    workers = {name: service for name, service in services.items() if name.startswith("worker")}
    assert sorted(targets["styleq-workers"]) == sorted(f"{name}:{environment(worker)['STYLEQ_METRICS_PORT']}" for name, worker in workers.items())


def test_flower_listens_on_the_workers_broker(services):
    command = services["flower"]["command"]

    assert command[command.index("--broker") + 1] == environment(services["worker-gpu0"])["STYLEQ_BROKER_URL"]
