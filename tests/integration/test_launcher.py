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
