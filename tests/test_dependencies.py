"""The layers import only what they may: shared knows no web, queue or torch; the engine knows no web, queue or SQL."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after_import(statement: str) -> set[str]:
    """Return the top-level modules loaded by `statement` in a fresh interpreter."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", ["settings", "db", "models", "jobs", "keys", "fleet", "storage", "params", "migrate", "errors"])
def test_shared_loads_neither_flask_celery_nor_torch(module):
    loaded = modules_after_import(f"import shared.{module}")

    assert not loaded & {"flask", "celery", "torch", "api", "worker"}


def test_engine_loads_neither_flask_celery_nor_sqlalchemy():
    loaded = modules_after_import("import worker.engine, worker.engine.weights")

    assert not loaded & {"flask", "celery", "sqlalchemy", "api"}
