"""Carry what `bench/gpu.sh` needs to a lent GPU machine that reaches no network, in one folder under 64 MiB.

    .venv/bin/python -m bench.bundle pack [--out .gpu]     # here: wheels, test images, the weights packed
    python3 -m bench.bundle unpack [--out .gpu]            # there, after installing the wheels (see below)

The device tool sends the working tree plus the folders named in `carry`, at most 64 MiB in all. The
lent machines have Python 3.12 with torch, numpy, Pillow, pytest and more, but not the service's own
needs (Flask, SQLAlchemy, Celery, pydantic...): `pack` downloads their wheels for that Python, at the
versions this checkout's .venv runs. The test images come from ../shared/images, which does not travel.
The vgg16-caffe weights (57 MB) are stored as four byte planes (each float's sign-and-exponent bytes
together, where fp32 weights repeat most) compressed with xz: 47 MB, about what fits beside the rest.

On the device, in the working tree's root (the `run` command `pack` prints):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site; python3 -m bench.bundle unpack && STYLEQ_PYTHON=python3 bash bench/gpu.sh
"""

from __future__ import annotations

import argparse
import lzma
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from bench.common import IMAGES, ROOT
from styleq.shared.adapters.settings import load_settings

CARRY_LIMIT = 64 * 2**20
# The service's needs that the lent machines' image lacks (device/KINDS.md lists what it has), by distribution name.
# Not psycopg (4 MB): those machines have no Postgres, so the GPU report runs the embedded backend.
MISSING_THERE = (
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "annotated-types",
    "typing-inspection",
    "python-dotenv",
    "platformdirs",
    "flask",
    "itsdangerous",
    "blinker",
    "sqlalchemy",
    "greenlet",
    "alembic",
    "mako",
    "celery",
    "kombu",
    "billiard",
    "vine",
    "amqp",
    "click-didyoumean",
    "click-repl",
    "click-plugins",
    "prompt-toolkit",
    "wcwidth",
    "tzdata",
    "tzlocal",
    "redis",
    "gunicorn",
    "python-json-logger",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
WEIGHTS = "vgg16-caffe-5486cb09.safetensors"
PLANES = 4


def pack_weights(source: Path, target: Path) -> None:
    """Write a safetensors file as its header, then its body's byte planes, xz-compressed."""
    raw = source.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    body = raw[header_end:]
    padding = (-len(body)) % PLANES
    planes = np.frombuffer(body + b"\0" * padding, dtype=np.uint8).reshape(-1, PLANES).T.copy()
    with lzma.open(target, "wb", preset=6) as out:
        out.write(len(raw).to_bytes(8, "little"))
        out.write(raw[:header_end])
        out.write(planes.tobytes())


def unpack_weights(source: Path, target: Path) -> None:
    """Undo `pack_weights`."""
    with lzma.open(source, "rb") as packed:
        size = int.from_bytes(packed.read(8), "little")
        header_length = int.from_bytes(packed.read(8), "little")
        header = header_length.to_bytes(8, "little") + packed.read(header_length)
        planes = np.frombuffer(packed.read(), dtype=np.uint8).reshape(PLANES, -1)
    body = planes.T.tobytes()[: size - len(header)]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(header + body)


def tree_bytes() -> int:
    """Return the size of what the device tool sends besides `carry`: tracked and untracked, not ignored, files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    return sum((ROOT / os.fsdecode(name)).stat().st_size for name in listed if name and (ROOT / os.fsdecode(name)).is_file())


def pack(out: Path, models: Path) -> None:
    """Fill `out` with the wheels, images and packed weights, and print the device command."""
    # Ignored by git, so only `carry` sends it, and never a commit.
    exclude = ROOT / ".git" / "info" / "exclude"
    line = f"/{out.relative_to(ROOT)}/"
    if (ROOT / ".git").is_dir() and line not in (exclude.read_text().splitlines() if exclude.exists() else []):
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as file:
            file.write(line + "\n")
    shutil.rmtree(out, ignore_errors=True)
    (out / "whl").mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in MISSING_THERE if _installed(name)]
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(out / "whl"),
            *pins,
        ],
        check=True,
    )
    shutil.copytree(IMAGES, out / "images", ignore=shutil.ignore_patterns("*.md", "*.txt"))
    pack_weights(models / WEIGHTS, out / f"{WEIGHTS}.planes.xz")
    carried = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    total = carried + tree_bytes()
    print(f"{out}: {carried / 2**20:.1f} MiB carried, {total / 2**20:.1f} MiB with the working tree (limit {CARRY_LIMIT / 2**20:.0f} MiB)")
    if total > CARRY_LIMIT:
        raise SystemExit("too large for the device tool: carry less")
    folder = out.relative_to(ROOT)
    print(
        f'run(carry=["{folder}"], timeout_s=540, command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir '
        f"--target /tmp/site {folder}/whl/*.whl && export PYTHONPATH=/tmp/site && python3 -m bench.bundle unpack --out {folder} && "
        f'STYLEQ_PYTHON=python3 GPU_SH_BUDGET_S=470 bash bench/gpu.sh")'
    )


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def unpack(out: Path, models: Path) -> None:
    """On the device: put the weights in the model directory and the images where the tests and benches look."""
    unpack_weights(out / f"{WEIGHTS}.planes.xz", models / WEIGHTS)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for picture in (out / "images").iterdir():
        shutil.copy2(picture, IMAGES / picture.name)
    print(f"weights in {models}, images in {IMAGES}")


def main(argv: list[str] | None = None) -> None:
    """Pack here, or unpack on the device."""
    parser = argparse.ArgumentParser(prog="python -m bench.bundle", description=__doc__.split("\n", 1)[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu", help="the carried folder (default .gpu, in the checkout)")
    parser.add_argument(
        "--models",
        type=Path,
        help="where the weights are (pack; default the settings' model directory) or go (unpack; default "
        "$STYLEQ_MODEL_DIR or .models, where bench/gpu.sh looks)",
    )
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else (Path.cwd() / args.out).resolve()
    if args.action == "pack":
        pack(out, args.models or load_settings().models_path)
    else:
        unpack(out, args.models or Path(os.environ.get("STYLEQ_MODEL_DIR", ROOT / ".models")))


if __name__ == "__main__":
    main()
