"""`styleq worker --gpus 0,1` starts one worker per GPU, pinned and named by host and GPU."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from kombu import Connection

from styleq.shared.adapters.db import make_engine, make_session_factory, session_scope
from styleq.shared.adapters.migrate import upgrade_database
from styleq.shared.adapters.settings import Settings
from styleq.shared.service.fleet import list_workers
from styleq.worker.launcher import NoSuchGpu, declare_queue, node_name, visible_gpus
from tests.services import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
# nvidia-smi as a machine with two GPUs answers the two questions styleq asks it (which GPUs, how much memory):
# this machine may have none, and the launcher's work per GPU is what these tests look at.
TWO_GPU_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=index*) printf '0\\n1\\n' ;;
  *--query-gpu=memory.total*) echo 81559 ;;
  *) exit 9 ;;
esac
"""


@pytest.fixture
def two_gpus(tmp_path, monkeypatch) -> str:
    """Put an nvidia-smi that lists GPUs 0 and 1 first on PATH (here and in the processes started); return that PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "nvidia-smi").write_text(TWO_GPU_NVIDIA_SMI)
    (folder / "nvidia-smi").chmod(0o755)
    path = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    return path


def test_gpu_lists_are_parsed_and_refused_clearly(two_gpus):
    assert visible_gpus("0, 1") == ["0", "1"] and visible_gpus("all") == ["0", "1"]
    assert visible_gpus("none") == []
    with pytest.raises(ValueError, match="indices like 0,1"):
        visible_gpus("first")
    # A worker on a GPU that is not there would run on the CPU under the GPU's name.
    with pytest.raises(NoSuchGpu, match="no GPU 2 on this machine; nvidia-smi lists 0, 1"):
        visible_gpus("0,2")
    assert node_name("1") == f"gpu1@{socket.gethostname()}" and node_name(None) == f"cpu@{socket.gethostname()}"


def test_a_machine_without_nvidia_smi_has_no_gpu_to_name(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there: no nvidia-smi

    assert visible_gpus("all") == []
    with pytest.raises(NoSuchGpu, match="--gpus 0: nvidia-smi lists no GPU on this machine; --gpus none runs a CPU worker"):
        visible_gpus("0")


def test_one_worker_process_per_gpu_each_pinned_to_its_own(tmp_path, two_gpus):
    environment = {**os.environ, "STYLEQ_DATA_DIR": str(tmp_path), "STYLEQ_SWEEP_EVERY_SECONDS": "1"}
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    database = f"sqlite:///{tmp_path / 'styleq.db'}"
    upgrade_database(database)
    log = (tmp_path / "worker.log").open("wb")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "styleq.cli", "worker", "--gpus", "0,1"], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    engine = make_engine(database)
    try:
        deadline = time.monotonic() + 120
        while True:
            with session_scope(make_session_factory(engine)) as session:
                workers = {worker.name: worker.gpu for worker in list_workers(session)}
            if len(workers) == 2 or time.monotonic() > deadline or launcher.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=60)
        log.close()
        engine.dispose()

    host = socket.gethostname()
    assert workers == {f"gpu0@{host}": "GPU 0", f"gpu1@{host}": "GPU 1"}, (tmp_path / "worker.log").read_text()[-3000:]
    assert code == 0


def test_a_name_another_live_process_on_this_host_holds_gets_a_suffix(tmp_path):
    from styleq.worker.launcher import reserve_name

    holding = f"import sys, pathlib; from styleq.worker.launcher import reserve_name; print(reserve_name('cpu@box', pathlib.Path({str(tmp_path)!r})), flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", holding], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "cpu@box"
        assert reserve_name("cpu@box", tmp_path) == "cpu-2@box"
        holder.stdin.close()
        holder.wait(timeout=30)
    # Once its holder has ended, the name is free again.
    assert reserve_name("cpu@box", tmp_path) == "cpu@box"


def test_workers_of_two_services_on_one_host_may_share_a_name(tmp_path):
    from styleq.worker.launcher import reserve_name

    first, second = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    holding = f"import sys; from styleq.worker.launcher import reserve_name; print(reserve_name('cpu@box', fleet={first!r}), flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", holding], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "cpu@box"
        assert reserve_name("cpu@box", fleet=second) == "cpu@box"
        holder.stdin.close()
        holder.wait(timeout=30)


def two_free_ports() -> int:
    """Return a port that nobody listens on, nor on the port after it."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two free ports in a row")


def test_two_cpu_workers_on_one_host_are_two_workers_in_the_fleet_each_with_the_hosts_memory_and_its_own_metrics_port(tmp_path):
    # The same settings for both, as when an operator copies a worker's service: the second takes the next name and the next port.
    port = two_free_ports()
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(tmp_path),
        "STYLEQ_SWEEP_EVERY_SECONDS": "1",
        "STYLEQ_METRICS_PORT": str(port),
        "STYLEQ_LOG_FORMAT": "text",
    }
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    database = f"sqlite:///{tmp_path / 'styleq.db'}"
    upgrade_database(database)
    logs = [(tmp_path / f"worker{index}.log").open("wb") for index in (1, 2)]
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "styleq.cli", "worker", "--gpus", "none"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        for log in logs
    ]
    engine = make_engine(database)
    try:
        deadline = time.monotonic() + 120
        while True:
            with session_scope(make_session_factory(engine)) as session:
                workers = {worker.name: worker.device_memory_bytes for worker in list_workers(session)}
            if len(workers) == 2 or time.monotonic() > deadline or any(launcher.poll() is not None for launcher in launchers):
                break
            time.sleep(0.5)
        # Each serves its own figures, on a port of its own (the first to start has the configured one).
        scrapes = [requests.get(f"http://127.0.0.1:{each}/metrics", timeout=10).status_code for each in (port, port + 1)]
    finally:
        for launcher in launchers:
            launcher.send_signal(signal.SIGTERM)
        codes = [launcher.wait(timeout=60) for launcher in launchers]
        for log in logs:
            log.close()
        engine.dispose()

    host = socket.gethostname()
    logs = [(tmp_path / f"worker{index}.log").read_text() for index in (1, 2)]
    assert set(workers) == {f"cpu@{host}", f"cpu-2@{host}"}, logs[1][-3000:]
    assert codes == [0, 0] and "Traceback" not in "".join(logs)
    assert scrapes == [200, 200]
    moved = [line for line in "".join(logs).splitlines() if f"metrics port {port} is in use" in line]
    assert len(moved) == 1 and f"serves its metrics on port {port + 1}" in moved[0], logs
    # A CPU worker's device is the host: the API plans job sizes by its RAM.
    assert set(workers.values()) == {os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}


def test_a_worker_stopped_the_moment_it_is_ready_exits_at_once_and_cleanly(tmp_path, models_dir, caffe_weights):
    # Its pool process is still starting (importing torch, loading the weights): SIGTERM'd then, it died, the pool
    # started another mid-shutdown, and the worker hung for good. Idle pool processes are now left to stop with the pool.
    database = f"sqlite:///{tmp_path / 'styleq.db'}"
    upgrade_database(database)
    environment = {**os.environ, "STYLEQ_DATA_DIR": str(tmp_path), "STYLEQ_MODEL_DIR": str(models_dir), "STYLEQ_LOG_FORMAT": "text"}
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    worker = start_worker(environment, tmp_path, "cpu")
    try:
        worker.popen.send_signal(signal.SIGTERM)
        code = worker.popen.wait(timeout=60)
    finally:
        worker.kill()
        worker.log.close()

    output = worker.log_path.read_text(errors="replace")
    assert code == 0 and "Traceback" not in output, output[-3000:]


def test_workers_starting_together_on_a_fresh_embedded_broker_all_find_the_queue(tmp_path):
    # Each start declares the queue, and on a fresh broker.db their inserts of its row race: the loser's
    # IntegrityError, "unrecoverable" to Celery, once took down one of the two workers of the test above. Here
    # a dozen starts at once on each of three fresh brokers; each then declares the queue as a consumer does.
    context = multiprocessing.get_context("fork")
    starters = 12
    for round_ in range(3):
        settings = Settings(data_dir=tmp_path / str(round_), queue="styleq.jobs")
        settings.data_dir.mkdir()
        barrier = context.Barrier(starters)

        def start(settings: Settings = settings, barrier=barrier) -> None:
            barrier.wait()
            declare_queue(settings)
            with Connection(settings.broker) as connection:
                connection.default_channel.queue_declare(settings.queue)

        processes = [context.Process(target=start) for _ in range(starters)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)

        assert [process.exitcode for process in processes] == [0] * starters, f"round {round_}"
