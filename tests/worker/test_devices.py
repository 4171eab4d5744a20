"""The device memory a worker reports to the fleet, which the API plans job sizes by."""

from __future__ import annotations

import os
import shutil

import pytest

from styleq.shared.adapters.settings import Settings
from styleq.worker.devices import device_memory_bytes


def test_a_cpu_worker_reports_the_hosts_memory_unless_the_setting_says_otherwise(tmp_path):
    assert device_memory_bytes(Settings(data_dir=tmp_path), None) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert device_memory_bytes(Settings(data_dir=tmp_path, device_memory_bytes=2**30), None) == 2**30
    assert device_memory_bytes(Settings(data_dir=tmp_path, device_memory_bytes=2**30), "0") == 2**30


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is installed here")
def test_a_gpu_worker_without_nvidia_smi_reports_nothing_rather_than_a_guess(tmp_path):
    assert device_memory_bytes(Settings(data_dir=tmp_path), "0") is None
