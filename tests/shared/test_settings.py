"""The settings object is the one reader of STYLEQ_* variables, the worker's name included."""

from __future__ import annotations

import socket
from pathlib import Path

from shared.settings import Settings, load_settings


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


def test_every_setting_is_in_the_operations_guide_with_its_default():
    """docs/OPERATIONS.md's table names each field of Settings as its variable, with the default the code has."""
    rows = {}
    for line in (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text().splitlines():
        if line.startswith("| `STYLEQ_"):
            variable, default, _meaning = (cell.strip() for cell in line.strip("|").split("|", 2))
            rows[variable.strip("`")] = default

    for name, field in Settings.model_fields.items():
        variable = f"STYLEQ_{name.upper()}"
        assert variable in rows, f"{variable} is missing from docs/OPERATIONS.md's table of settings"
        if field.default_factory is not None:
            continue  # computed (the per-user data folder): described in words
        if field.default is None:
            assert rows[variable].startswith("unset"), (variable, rows[variable])
        else:
            shown = f"{field.default:g}" if isinstance(field.default, float) else str(field.default)
            assert rows[variable].startswith(f"`{shown}`"), (variable, rows[variable], shown)
    assert set(rows) == {f"STYLEQ_{name.upper()}" for name in Settings.model_fields}, "a row names no setting"
