"""The layering, stated and checked by folder: each room imports only the rooms below it.

    cli ──> api ──> shared        (the command line drives everything; nothing imports cli)
     │               ^   ^
     └──> worker ────┘   │        (api never imports worker: jobs go to it by task name)
            └─> worker.engine ──> shared.domain only (pure torch otherwise)

    shared.service ──> shared.adapters ──> shared.domain (standard library only)

Everything is imported as `styleq.<folder>` (pyproject.toml maps the folders). `shared` knows no web, queue,
command line or torch; the engine's loading path fetches nothing. A module added to a folder is checked by its
folder's rule with no list to update.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The folders installed under `styleq`, by their folder names (the top-level names they must never be imported by).
FOLDERS = ("api", "cli", "shared", "worker")
PROJECT = {f"styleq.{folder}" for folder in FOLDERS}
SHARED_ROOMS = ("domain", "adapters", "service")
# The statements run once, in one interpreter, for every test of this module: keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_dependencies")


def module_name(path: Path) -> str:
    """Return the name `path` is imported by: `styleq.shared.service.jobs` for shared/service/jobs.py, `tests.x` for tests/x.py."""
    parts = path.relative_to(REPO).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("styleq", *parts) if parts[0] in (*FOLDERS, "migrations") else parts)


def project_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py") if ".peers" not in path.parts)


def module_level_third_party(path: Path) -> tuple[str, ...]:
    """Return the third-party modules `path` imports at its top level (not lazily, not for type checking), in order."""
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            modules = [node.module]
        names += [
            name for name in modules if name.split(".")[0] not in {*sys.stdlib_module_names, "styleq", "__future__"} and name not in names
        ]
    return tuple(names)


SHARED_MODULES = [module_name(path) for room in SHARED_ROOMS for path in project_files(f"shared/{room}") if path.stem != "__init__"]
# What each statement's process has imported before it runs (in this order): third-party packages the statement
# imports anyway, so that the modules it leaves loaded are exactly those of a fresh interpreter (see `loaded`).
# For a module of shared/, the third-party modules it imports at its top level, read from its source.
SETTINGS = ("pydantic_settings",)
ORM_SETTINGS = ("sqlalchemy", "sqlalchemy.orm", *SETTINGS)
TORCH = ("torch", "torchvision.models")
SHOWN_HELP = "import contextlib, io\nfrom styleq.cli import main\nwith contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])"
STATEMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    **{
        module: (module_level_third_party(REPO / (module.removeprefix("styleq.").replace(".", "/") + ".py")), f"import {module}")
        for module in SHARED_MODULES
    },
    "api": ((), "import styleq.api; styleq.api.create_app"),
    "storage everywhere": (
        (*TORCH, *ORM_SETTINGS),
        "import styleq.api, styleq.shared.adapters.storage, styleq.shared.service.retention, styleq.shared.service.jobs, styleq.worker.runner; styleq.api.create_app",
    ),
    "gunicorn config": (SETTINGS, "import styleq.api.gunicorn_config"),
    "worker": (
        (*TORCH, *ORM_SETTINGS),
        "import styleq.worker.celery_app, styleq.worker.launcher, styleq.worker.process, styleq.worker.runner, styleq.worker.downloads, styleq.worker.webhooks",
    ),
    "worker main process": (ORM_SETTINGS, "import styleq.worker.launcher, styleq.worker.celery_app, styleq.worker.metrics"),
    "engine": (TORCH, "import styleq.worker.engine, styleq.worker.engine.weights"),
    "weights": (TORCH, "import styleq.worker.engine.weights"),
    "styleq --help": ((), SHOWN_HELP),
    "nothing": ((), "pass"),
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
        assert not [name for name in preloads if name.split(".")[0] in {"styleq", *FOLDERS}]
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
    """Return which of `packages` the statement `name` loads (by `room`): the test's failure names them."""
    return {room(module) for module in modules_after(loaded, name)} & packages


def room(module: str) -> str:
    """Return the package a module is judged by: `styleq.api` for the project's (`styleq.shared.domain` in shared/), else its top level."""
    parts = module.split(".")
    if parts[0] != "styleq":
        return parts[0]
    return ".".join(parts[:3] if parts[1:2] == ["shared"] and parts[2:3] and parts[2] in SHARED_ROOMS else parts[:2])


def imported_modules(path: Path) -> set[str]:
    """Return the absolute module names `path` imports anywhere in its body (lazy imports too)."""
    module = module_name(path)
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
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


def project_imports(path: Path) -> set[str]:
    """Return the project modules `path` imports, by the package each is judged by (`room`)."""
    return {room(name) for name in imported_modules(path) if name.startswith("styleq.")} - {"styleq"}


@pytest.mark.parametrize("module", SHARED_MODULES)
def test_shared_loads_neither_flask_celery_click_nor_torch(loaded, module):
    assert loaded_of(loaded, module, {"flask", "celery", "click", "torch", "styleq.api", "styleq.worker", "styleq.cli"}) == set()


@pytest.mark.parametrize("path", project_files("shared/domain"), ids=lambda path: path.name)
def test_the_domain_imports_only_the_standard_library(loaded, path):
    imported = {name.split(".")[0] for name in imported_modules(path)} - {"__future__"}
    module = module_name(path)

    assert imported - set(sys.stdlib_module_names) <= {"styleq"} and project_imports(path) <= {"styleq.shared.domain"}
    if path.stem != "__init__":
        # Beyond what a bare interpreter has loaded: the standard library and the domain only.
        added = modules_after(loaded, module) - modules_after(loaded, "nothing")
        assert {name for name in added if name.split(".")[0] not in sys.stdlib_module_names} <= {"styleq", "styleq.shared"} | {
            name for name in added if name.startswith("styleq.shared.domain")
        }


@pytest.mark.parametrize("path", project_files("shared/adapters"), ids=lambda path: path.name)
def test_the_adapters_import_of_the_project_only_the_domain_and_each_other(path):
    assert project_imports(path) <= {"styleq.shared.domain", "styleq.shared.adapters"}


@pytest.mark.parametrize("path", project_files("shared/service"), ids=lambda path: path.name)
def test_the_service_imports_of_the_project_only_shared(path):
    assert project_imports(path) <= {"styleq.shared.domain", "styleq.shared.adapters", "styleq.shared.service"}


def test_shared_is_its_three_rooms_and_nothing_beside_them():
    beside = sorted(path.name for path in (REPO / "shared").iterdir() if path.name not in {*SHARED_ROOMS, "__init__.py", "__pycache__"})

    assert beside == []


@pytest.mark.parametrize("folder", ["api", "cli", "shared", "worker", "bench", "tests", "migrations"])
def test_nothing_imports_a_folder_by_its_bare_name(folder):
    # From the repository's root `import api` would still find the folder, as a second copy of every module beside
    # `styleq.api`'s (two registries, two settings caches): every import names the installed package.
    bare = {
        str(path.relative_to(REPO)): sorted(name for name in imported_modules(path) if name.split(".")[0] in FOLDERS)
        for path in project_files(folder)
    }

    assert {path: names for path, names in bare.items() if names} == {}


def test_the_api_loads_neither_torch_nor_the_worker_nor_the_cli(loaded):
    assert loaded_of(loaded, "api", {"torch", "styleq.worker", "styleq.cli"}) == set()


def test_boto3_loads_only_where_a_deployment_uses_object_storage(loaded):
    # A directory's deployment (the embedded default) never pays for boto3's import, nor needs it installed to work.
    assert loaded_of(loaded, "storage everywhere", {"boto3", "botocore"}) == set()


def test_gunicorn_s_config_leaves_prometheus_client_for_the_processes_it_forks(loaded):
    # gunicorn's master imports the `styleq.api` package with `styleq.api.gunicorn_config`; prometheus_client chooses its
    # storage at import, and a choice made there, before the config sets the folder, would hold in every process.
    assert loaded_of(loaded, "gunicorn config", {"prometheus_client"}) == set()


def test_the_worker_loads_neither_flask_nor_the_api_nor_the_cli(loaded):
    assert loaded_of(loaded, "worker", {"flask", "styleq.api", "styleq.cli"}) == set()


def test_the_worker_s_main_process_leaves_prometheus_client_for_after_its_metrics_folder_is_set(loaded):
    # prometheus_client chooses at import between in-memory and multiprocess storage; the pool process
    # inherits the choice, so nothing may import it before `serve_metrics` has set the folder.
    assert loaded_of(loaded, "worker main process", {"prometheus_client", "torch"}) == set()


def test_the_engine_imports_of_the_project_only_the_domain(loaded):
    engine = modules_after(loaded, "engine")
    written = set().union(*(imported_modules(path) for path in project_files("worker/engine")))

    def outside_the_engine(names: set[str]) -> set[str]:
        return {room(name) for name in names if name.startswith("styleq.") and not name.startswith("styleq.worker.engine")} - {
            "styleq",
            "styleq.worker",
            "styleq.shared",
        }

    # The memory model is pure arithmetic the API also plans sizes by; tiling sizes its passes by it.
    assert outside_the_engine(engine) == outside_the_engine(written) == {"styleq.shared.domain"}
    # ... and hands none of it on: callers take parameters from styleq.shared.domain.params, by one path.
    from styleq.shared.domain import params
    from styleq.worker import engine as engine_package

    assert not {name for name in vars(params) if not name.startswith("_")} & set(vars(engine_package)) - {"annotations", "torch"}
    assert loaded_of(loaded, "engine", {"flask", "celery", "sqlalchemy", "click", "styleq.api", "styleq.cli"}) == set()


def test_loading_weights_fetches_nothing(loaded):
    written = imported_modules(REPO / "worker" / "engine" / "weights.py")

    assert not written & {"onnx", "subprocess", "urllib.request", "http.client", "styleq.shared.adapters.storage"}
    assert loaded_of(loaded, "weights", {"onnx"}) == set()


def test_nothing_imports_the_cli():
    importers = [
        str(path.relative_to(REPO))
        for folder in set(FOLDERS) - {"cli"}
        for path in project_files(folder)
        if "styleq.cli" in project_imports(path)
    ]

    assert importers == []


def test_styleq_help_loads_no_torch(loaded):
    assert loaded_of(loaded, "styleq --help", {"torch", "flask", "celery", "sqlalchemy", "styleq.api", "styleq.worker"}) == set()


def test_the_architecture_page_maps_every_room():
    rooms = {str(path.parent.relative_to(REPO)) for folder in (*FOLDERS, "migrations") for path in (REPO / folder).rglob("__init__.py")}
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()

    assert sorted(room for room in rooms if f"`{room}/`" not in text) == []
