"""The layering, stated and checked: each room imports only the rooms below it.

    cli ──> api ──> shared        (the command line drives everything; nothing imports cli)
     │               ^   ^
     └──> worker ────┘   │        (api never imports worker: jobs go to it by task name)
            └─> worker.engine ──> shared.params only (pure torch otherwise)

`shared` knows no web, queue, command line or torch; the engine's loading path fetches nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"api", "cli", "shared", "worker"}


def modules_after(statement: str) -> set[str]:
    """Return every module loaded by `statement` in a fresh interpreter."""
    code = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(result.stdout.split())


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def imported_modules(path: Path) -> set[str]:
    """Return the absolute module names `path` imports anywhere in its body (lazy imports too)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
    return names


@pytest.mark.parametrize(
    "module",
    [
        "settings",
        "db",
        "models",
        "jobs",
        "leases",
        "keys",
        "dashboard_sessions",
        "secret_key",
        "fleet",
        "storage",
        "object_storage",
        "params",
        "migrate",
        "errors",
        "images",
        "outputs",
        "memory",
        "logs",
        "retention",
        "stats",
        "webhooks",
        "deliveries",
    ],
)
def test_shared_loads_neither_flask_celery_click_nor_torch(module):
    loaded = top_level(modules_after(f"import shared.{module}"))

    assert not loaded & {"flask", "celery", "click", "torch", "api", "worker", "cli"}


def test_the_api_loads_neither_torch_nor_the_worker_nor_the_cli():
    loaded = top_level(modules_after("import api; api.create_app"))

    assert not loaded & {"torch", "worker", "cli"}


def test_boto3_loads_only_where_a_deployment_uses_object_storage():
    # A directory's deployment (the embedded default) never pays for boto3's import, nor needs it installed to work.
    loaded = top_level(modules_after("import api, shared.storage, shared.retention, shared.jobs, worker.runner; api.create_app"))

    assert not loaded & {"boto3", "botocore"}


def test_gunicorn_s_config_leaves_prometheus_client_for_the_processes_it_forks():
    # gunicorn's master imports the `api` package with `api.gunicorn_config`; prometheus_client chooses its
    # storage at import, and a choice made there, before the config sets the folder, would hold in every process.
    loaded = top_level(modules_after("import api.gunicorn_config"))

    assert "prometheus_client" not in loaded


def test_the_worker_loads_neither_flask_nor_the_api_nor_the_cli():
    loaded = top_level(
        modules_after("import worker.celery_app, worker.launcher, worker.process, worker.runner, worker.downloads, worker.webhooks")
    )

    assert not loaded & {"flask", "api", "cli"}


def test_the_worker_s_main_process_leaves_prometheus_client_for_after_its_metrics_folder_is_set():
    # prometheus_client chooses at import between in-memory and multiprocess storage; the pool process
    # inherits the choice, so nothing may import it before `serve_metrics` has set the folder.
    loaded = top_level(modules_after("import worker.launcher, worker.celery_app, worker.metrics"))

    assert not loaded & {"prometheus_client", "torch"}


def test_the_engine_imports_from_the_project_only_shared_params_and_the_memory_model():
    loaded = modules_after("import worker.engine, worker.engine.weights")
    written = set().union(*(imported_modules(path) for path in (REPO / "worker" / "engine").glob("*.py")))

    def outside_the_engine(names: set[str]) -> set[str]:
        return {name for name in names if name.split(".")[0] in PROJECT and not name.startswith("worker.engine")} - {"worker", "shared"}

    # The memory model is pure arithmetic the API also plans sizes by; tiling sizes its passes by it.
    assert outside_the_engine(loaded) == outside_the_engine(written) == {"shared.params", "shared.memory"}
    # ... and hands none of it on: callers take parameters from shared.params, by one path.
    import shared.params
    import worker.engine

    assert not {name for name in vars(shared.params) if not name.startswith("_")} & set(vars(worker.engine)) - {"annotations", "torch"}
    assert not top_level(loaded) & {"flask", "celery", "sqlalchemy", "click", "api", "cli"}


def test_loading_weights_fetches_nothing():
    written = imported_modules(REPO / "worker" / "engine" / "weights.py")

    assert not written & {"onnx", "subprocess", "urllib.request", "http.client", "shared.storage"}
    assert "onnx" not in top_level(modules_after("import worker.engine.weights"))


def test_nothing_imports_the_cli():
    importers = [
        path.relative_to(REPO)
        for package in PROJECT - {"cli"}
        for path in (REPO / package).rglob("*.py")
        if any(name.split(".")[0] == "cli" for name in imported_modules(path))
    ]

    assert importers == []


def test_styleq_help_loads_no_torch():
    shown = "import contextlib, io\nfrom cli import main\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])"
    loaded = top_level(modules_after(shown))

    assert not loaded & {"torch", "flask", "celery", "sqlalchemy", "api", "worker"}
