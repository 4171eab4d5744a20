"""`styleq worker --gpus 0,1` starts one worker per GPU, pinned and named by host and GPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from shared.db import make_engine, make_session_factory, session_scope
from shared.fleet import list_workers
from shared.migrate import upgrade_database
from worker.launcher import node_name, visible_gpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_gpu_lists_are_parsed_and_refused_clearly():
    assert visible_gpus("0, 1") == ["0", "1"]
    assert visible_gpus("none") == []
    # No nvidia-smi (or no GPU) here: `all` means one CPU worker.
    assert visible_gpus("all") == [] or all(index.isdigit() for index in visible_gpus("all"))
    with pytest.raises(ValueError, match="indices like 0,1"):
        visible_gpus("first")
    assert node_name("1") == f"gpu1@{socket.gethostname()}" and node_name(None) == f"cpu@{socket.gethostname()}"


def test_one_worker_process_per_gpu_each_pinned_to_its_own(tmp_path):
    environment = {**os.environ, "STYLEQ_DATA_DIR": str(tmp_path), "STYLEQ_SWEEP_EVERY_SECONDS": "1"}
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    database = f"sqlite:///{tmp_path / 'styleq.db'}"
    upgrade_database(database)
    log = (tmp_path / "worker.log").open("wb")
    launcher = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--gpus", "0,1"], env=environment, stdout=log, stderr=subprocess.STDOUT)
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
    from worker.launcher import reserve_name

    holding = f"import sys, pathlib; from worker.launcher import reserve_name; print(reserve_name('cpu@box', pathlib.Path({str(tmp_path)!r})), flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", holding], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "cpu@box"
        assert reserve_name("cpu@box", tmp_path) == "cpu-2@box"
        holder.stdin.close()
        holder.wait(timeout=30)
    # Once its holder has ended, the name is free again.
    assert reserve_name("cpu@box", tmp_path) == "cpu@box"


def test_workers_of_two_services_on_one_host_may_share_a_name(tmp_path):
    from worker.launcher import reserve_name

    first, second = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    holding = f"import sys; from worker.launcher import reserve_name; print(reserve_name('cpu@box', fleet={first!r}), flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", holding], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "cpu@box"
        assert reserve_name("cpu@box", fleet=second) == "cpu@box"
        holder.stdin.close()
        holder.wait(timeout=30)


def test_two_cpu_workers_on_one_host_are_two_workers_in_the_fleet_each_with_the_hosts_memory(tmp_path):
    environment = {**os.environ, "STYLEQ_DATA_DIR": str(tmp_path), "STYLEQ_SWEEP_EVERY_SECONDS": "1"}
    for name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL"):
        environment.pop(name, None)
    database = f"sqlite:///{tmp_path / 'styleq.db'}"
    upgrade_database(database)
    logs = [(tmp_path / f"worker{index}.log").open("wb") for index in (1, 2)]
    launchers = [
        subprocess.Popen([sys.executable, "-m", "cli", "worker", "--gpus", "none"], env=environment, stdout=log, stderr=subprocess.STDOUT)
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
    finally:
        for launcher in launchers:
            launcher.send_signal(signal.SIGTERM)
        codes = [launcher.wait(timeout=60) for launcher in launchers]
        for log in logs:
            log.close()
        engine.dispose()

    host = socket.gethostname()
    assert set(workers) == {f"cpu@{host}", f"cpu-2@{host}"}, (tmp_path / "worker2.log").read_text()[-3000:]
    assert codes == [0, 0]
    # A CPU worker's device is the host: the API plans job sizes by its RAM.
    assert set(workers.values()) == {os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
