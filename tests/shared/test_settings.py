"""The settings object is the one reader of STYLEQ_* variables, the worker's name included."""

from __future__ import annotations

import socket

from shared.settings import load_settings


def test_the_worker_name_comes_from_styleq_worker_name_else_the_host(monkeypatch):
    monkeypatch.delenv("STYLEQ_WORKER_NAME", raising=False)
    assert load_settings().worker_node == socket.gethostname()

    monkeypatch.setenv("STYLEQ_WORKER_NAME", "gpu3@rack7")
    assert load_settings().worker_name == load_settings().worker_node == "gpu3@rack7"


def test_fair_use_limits_are_on_by_default_and_zero_switches_them_off(monkeypatch):
    monkeypatch.delenv("STYLEQ_MAX_REQUESTS_PER_MINUTE", raising=False)
    monkeypatch.delenv("STYLEQ_MAX_ACTIVE_JOBS", raising=False)
    assert (load_settings().max_requests_per_minute, load_settings().max_active_jobs) == (300, 10)

    monkeypatch.setenv("STYLEQ_MAX_REQUESTS_PER_MINUTE", "0")
    monkeypatch.setenv("STYLEQ_MAX_ACTIVE_JOBS", "0")
    assert (load_settings().max_requests_per_minute, load_settings().max_active_jobs) == (0, 0)
