"""The settings object is the one reader of STYLEQ_* variables, the worker's name included."""

from __future__ import annotations

import socket

import pytest

from styleq.shared.adapters.settings import Settings, load_settings


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


@pytest.mark.parametrize(
    "broker_url", [None, "sqla+sqlite:////tmp/broker.db", "redis://127.0.0.1:6379/0", "rediss://cache:6380/1", "amqp://guest@rabbit//"]
)
def test_task_events_for_flower_go_only_through_brokers_that_fan_out(broker_url, tmp_path):
    from kombu import Connection

    settings = Settings(data_dir=tmp_path, broker_url=broker_url)
    fans_out = "fanout" in Connection(settings.broker).transport.implements.exchange_type

    config = settings.celery_config()
    assert settings.broker_sends_events is fans_out
    assert config["worker_send_task_events"] is config["task_send_sent_event"] is fans_out


def test_the_retry_delays_are_comma_separated_seconds_and_default_to_about_a_minute_and_fifteen_seconds(monkeypatch):
    monkeypatch.delenv("STYLEQ_DATABASE_RETRY_DELAYS", raising=False)
    monkeypatch.delenv("STYLEQ_RESULT_WRITE_RETRY_DELAYS", raising=False)
    assert load_settings().database_retry_delays == (1, 2, 4, 8, 15, 30)
    assert load_settings().result_write_retry_delays == (1, 2, 4, 8)

    # As the fault drills shorten them for worker processes; empty means a single try.
    monkeypatch.setenv("STYLEQ_DATABASE_RETRY_DELAYS", "0.5, 1,2")
    monkeypatch.setenv("STYLEQ_RESULT_WRITE_RETRY_DELAYS", "")
    assert (load_settings().database_retry_delays, load_settings().result_write_retry_delays) == ((0.5, 1, 2), ())

    monkeypatch.setenv("STYLEQ_DATABASE_RETRY_DELAYS", "1,-2")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        load_settings()
