"""What `pip install .` puts in site-packages: one package, `styleq`, that runs from there as it runs from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The folders installed under `styleq` (pyproject.toml's package-dir) and what the wheel is built from.
FOLDERS = {"api", "cli", "worker", "shared", "migrations"}
pytestmark = pytest.mark.xdist_group("test_packaging")


def package_of(folder: Path) -> str:
    return ".".join(("styleq", *folder.relative_to(REPO).parts))


def test_every_folder_of_python_files_is_a_package_of_the_install():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {package_of(path.parent) for folder in FOLDERS for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts}

    assert folders == listed
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {f"styleq.{folder}": folder for folder in FOLDERS}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment with the wheel of this checkout installed, without the editable install's import hook.

    The dependencies come from this environment's site-packages through a .pth line (a path added that way is not a
    site folder, so the editable install's own .pth there is not run); the wheel is built from a copy of the sources,
    so the build leaves nothing in the checkout.
    """
    folder = tmp_path_factory.mktemp("packaging")
    sources = folder / "sources"
    sources.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, sources / name)
    for name in FOLDERS:
        shutil.copytree(REPO / name, sources / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = folder / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(sources)],
        check=True,
        cwd=folder,
    )
    environment = folder / "env"
    venv.create(environment, with_pip=False)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(environment), "platbase": str(environment)}))
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (wheel,) = wheels.glob("styleq-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(site_packages), str(wheel)],
        check=True,
        cwd=folder,
    )
    return environment


def run_installed(environment: Path, code: str, cwd: Path, **variables: str) -> str:
    """Run `code` in the installed environment, from `cwd` (never the checkout, whose folders would import as well)."""
    ran = subprocess.run(
        [str(environment / "bin" / "python"), "-c", code],
        cwd=cwd,
        env={**{name: value for name, value in os.environ.items() if not name.startswith("STYLEQ_")}, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_the_install_puts_one_package_styleq_in_site_packages(installed, tmp_path):
    top_level = run_installed(
        installed,
        "import sysconfig, os; print('\\n'.join(sorted(os.listdir(sysconfig.get_path('purelib')))))",
        tmp_path,
    ).split()

    assert [name for name in top_level if not name.endswith((".dist-info", ".pth")) and name != "bin"] == ["styleq"]


def test_the_installed_package_runs_from_site_packages_and_its_help_loads_no_torch(installed, tmp_path):
    said = run_installed(
        installed,
        "import contextlib, io, sys\n"
        "from styleq.cli import main\n"
        "import styleq.cli\n"
        "shown = io.StringIO()\n"
        "with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print(styleq.cli.__file__, 'torch' in sys.modules, 'transfer' in shown.getvalue())",
        tmp_path,
    )
    where, torch_loaded, transfer_shown = said.split()

    assert Path(where).is_relative_to(installed) and torch_loaded == "False" and transfer_shown == "True"


def test_the_installed_package_carries_its_migrations_and_the_dashboard_s_pages(installed, tmp_path):
    database = tmp_path / "installed.db"
    said = run_installed(
        installed,
        "import styleq.api, pathlib\n"
        "from styleq.shared.adapters.migrate import MIGRATIONS, upgrade_database\n"
        f"upgrade_database('sqlite:///{database}')\n"
        "print(MIGRATIONS, len(list((pathlib.Path(styleq.api.__file__).parent / 'templates').glob('*.html'))))",
        tmp_path,
    )
    migrations, templates = said.split()

    assert Path(migrations).is_relative_to(installed) and int(templates) > 0
    assert database.stat().st_size > 0
