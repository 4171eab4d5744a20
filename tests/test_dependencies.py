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
# The statements run once, in one interpreter, for every test of this module: keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_dependencies")

SHARED_MODULES = [
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
]
# What each statement's process has imported before it runs (in this order): third-party packages the statement
# imports anyway, so that the modules it leaves loaded are exactly those of a fresh interpreter (see `loaded`).
SQL = ("sqlalchemy",)
ORM = (*SQL, "sqlalchemy.orm")
ORM_SETTINGS = (*ORM, "pydantic_settings")
SETTINGS = ("pydantic_settings",)
TORCH = ("torch", "torchvision.models")
PRELOADS = {
    "migrate": SQL,
    **dict.fromkeys(["db", "models", "leases", "keys", "dashboard_sessions", "fleet", "stats", "deliveries"], ORM),
    **dict.fromkeys(["jobs", "retention", "webhooks"], ORM_SETTINGS),
    **dict.fromkeys(["settings", "secret_key", "logs"], SETTINGS),
}
SHOWN_HELP = "import contextlib, io\nfrom cli import main\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])"
STATEMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    **{f"shared.{module}": (PRELOADS.get(module, ()), f"import shared.{module}") for module in SHARED_MODULES},
    "api": ((), "import api; api.create_app"),
    "storage everywhere": (
        (*TORCH, *ORM_SETTINGS),
        "import api, shared.storage, shared.retention, shared.jobs, worker.runner; api.create_app",
    ),
    "gunicorn config": (SETTINGS, "import api.gunicorn_config"),
    "worker": (
        (*TORCH, *ORM_SETTINGS),
        "import worker.celery_app, worker.launcher, worker.process, worker.runner, worker.downloads, worker.webhooks",
    ),
    "worker main process": (ORM_SETTINGS, "import worker.launcher, worker.celery_app, worker.metrics"),
    "engine": (TORCH, "import worker.engine, worker.engine.weights"),
    "weights": (TORCH, "import worker.engine.weights"),
    "styleq --help": ((), SHOWN_HELP),
}

# Runs in a fresh interpreter: argv[1] the folder for the answers, then (preloads, statement) pairs. Each statement runs
# in a process forked for it from one that has imported its preloads (a chain of forks, one import each, shared by the
# statements whose preloads begin alike), and writes the names in sys.modules after it, or its traceback.
FORKING_RUNNER = """
import os, sys

def forked(work):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)

def answer(index, suffix, text):
    with open(os.path.join(sys.argv[1], f"{index}.{suffix}"), "w") as file:
        file.write(text)

def failed(index):
    import traceback
    answer(index, "error", traceback.format_exc())

def statement(index, code):
    try:
        exec(compile(code, "<statement>", "exec"), {"__name__": "__main__"})
    except BaseException:
        failed(index)
    else:
        answer(index, "modules", " ".join(sorted(sys.modules)))

def preloaded(module, items):
    try:
        __import__(module)
    except BaseException:
        for _, index, _ in items:
            failed(index)
    else:
        run(items)

def run(items):
    groups = {}
    for preloads, index, code in items:
        if preloads:
            groups.setdefault(preloads[0], []).append((preloads[1:], index, code))
        else:
            forked(lambda index=index, code=code: statement(index, code))
    for module, rest in groups.items():
        forked(lambda module=module, rest=rest: preloaded(module, rest))

pairs = sys.argv[2:]
run([(tuple(filter(None, pairs[i].split(","))), i // 2, pairs[i + 1]) for i in range(0, len(pairs), 2)])
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, set[str] | str]:
    """Each statement's loaded modules (or its traceback), as a fresh interpreter running it alone would leave them.

    One interpreter runs them all, each in a process forked for it, so each starts from a clean slate but none pays
    again for the interpreter's start or for the big imports it shares. A preload changes nothing the tests check: it
    is a third-party package the statement imports anyway, and what it imports stays in sys.modules for the statement's
    answer, so a forbidden module loaded through it is still seen; it imports no project module.
    """
    folder = tmp_path_factory.mktemp("modules")
    for preloads, _ in STATEMENTS.values():
        assert not {name.split(".")[0] for name in preloads} & PROJECT
    pairs = [part for preloads, code in STATEMENTS.values() for part in (",".join(preloads), code)]
    subprocess.run([sys.executable, "-c", FORKING_RUNNER, str(folder), *pairs], check=True, cwd=REPO)
    answers: dict[str, set[str] | str] = {}
    for index, name in enumerate(STATEMENTS):
        if (folder / f"{index}.modules").exists():
            answers[name] = set((folder / f"{index}.modules").read_text().split())
        elif (folder / f"{index}.error").exists():
            answers[name] = (folder / f"{index}.error").read_text()
        else:
            answers[name] = "its process died without an answer"
    return answers


def modules_after(loaded: dict[str, set[str] | str], name: str) -> set[str]:
    """Return every module loaded by the statement `name` in a fresh interpreter; fail with its traceback if it raised."""
    modules = loaded[name]
    if isinstance(modules, str):
        pytest.fail(f"{STATEMENTS[name][1]!r} left no list of modules:\n{modules}")
    return modules


def loaded_of(loaded: dict[str, set[str] | str], name: str, packages: set[str]) -> set[str]:
    """Return which of `packages` the statement `name` loads (by top-level name): the test's failure names them."""
    return top_level(modules_after(loaded, name)) & packages


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


@pytest.mark.parametrize("module", SHARED_MODULES)
def test_shared_loads_neither_flask_celery_click_nor_torch(loaded, module):
    assert loaded_of(loaded, f"shared.{module}", {"flask", "celery", "click", "torch", "api", "worker", "cli"}) == set()


def test_the_api_loads_neither_torch_nor_the_worker_nor_the_cli(loaded):
    assert loaded_of(loaded, "api", {"torch", "worker", "cli"}) == set()


def test_boto3_loads_only_where_a_deployment_uses_object_storage(loaded):
    # A directory's deployment (the embedded default) never pays for boto3's import, nor needs it installed to work.
    assert loaded_of(loaded, "storage everywhere", {"boto3", "botocore"}) == set()


def test_gunicorn_s_config_leaves_prometheus_client_for_the_processes_it_forks(loaded):
    # gunicorn's master imports the `api` package with `api.gunicorn_config`; prometheus_client chooses its
    # storage at import, and a choice made there, before the config sets the folder, would hold in every process.
    assert loaded_of(loaded, "gunicorn config", {"prometheus_client"}) == set()


def test_the_worker_loads_neither_flask_nor_the_api_nor_the_cli(loaded):
    assert loaded_of(loaded, "worker", {"flask", "api", "cli"}) == set()


def test_the_worker_s_main_process_leaves_prometheus_client_for_after_its_metrics_folder_is_set(loaded):
    # prometheus_client chooses at import between in-memory and multiprocess storage; the pool process
    # inherits the choice, so nothing may import it before `serve_metrics` has set the folder.
    assert loaded_of(loaded, "worker main process", {"prometheus_client", "torch"}) == set()


def test_the_engine_imports_from_the_project_only_shared_params_and_the_memory_model(loaded):
    engine = modules_after(loaded, "engine")
    written = set().union(*(imported_modules(path) for path in (REPO / "worker" / "engine").glob("*.py")))

    def outside_the_engine(names: set[str]) -> set[str]:
        return {name for name in names if name.split(".")[0] in PROJECT and not name.startswith("worker.engine")} - {"worker", "shared"}

    # The memory model is pure arithmetic the API also plans sizes by; tiling sizes its passes by it.
    assert outside_the_engine(engine) == outside_the_engine(written) == {"shared.params", "shared.memory"}
    # ... and hands none of it on: callers take parameters from shared.params, by one path.
    import shared.params
    import worker.engine

    assert not {name for name in vars(shared.params) if not name.startswith("_")} & set(vars(worker.engine)) - {"annotations", "torch"}
    assert loaded_of(loaded, "engine", {"flask", "celery", "sqlalchemy", "click", "api", "cli"}) == set()


def test_loading_weights_fetches_nothing(loaded):
    written = imported_modules(REPO / "worker" / "engine" / "weights.py")

    assert not written & {"onnx", "subprocess", "urllib.request", "http.client", "shared.storage"}
    assert loaded_of(loaded, "weights", {"onnx"}) == set()


def test_nothing_imports_the_cli():
    importers = [
        path.relative_to(REPO)
        for package in PROJECT - {"cli"}
        for path in (REPO / package).rglob("*.py")
        if any(name.split(".")[0] == "cli" for name in imported_modules(path))
    ]

    assert importers == []


def test_styleq_help_loads_no_torch(loaded):
    assert loaded_of(loaded, "styleq --help", {"torch", "flask", "celery", "sqlalchemy", "api", "worker"}) == set()
