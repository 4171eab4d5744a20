"""Where a command's CPU goes, by kind of process: run it, read /proc twice a second, print CPU-seconds per kind.

    python -m bench.suite_cpu -- .venv/bin/python -m pytest -n 4 --dist loadgroup -m "not full and not alone"

`make test` on the 2-core machine is CPU-bound where the CPU lacks AVX-512 (docs/TESTS.md): this says which
processes to cut. A process is counted from when the sampler first sees it to when it last saw it alive, so one
that lives under half a second is missed and the figures are a little low. Linux only.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# The kinds, by what a process's command line holds; the first that matches names it.
KINDS = (
    (" -m styleq.worker", "worker"),
    ("gunicorn", "gunicorn"),
    ("chromium", "chromium"),
    ("postgres", "postgres"),
    ("redis-server", "redis"),
    ("weed", "seaweedfs"),
    ("-c import sys;exec(eval(sys.stdin.readline()))", "test process"),  # an xdist worker
    ("pytest", "pytest"),
    ("mypy", "lint"),
    ("ruff", "lint"),
)


@dataclass
class Seen:
    kind: str
    parent: str
    cpu_seconds: float
    # Its CPU time when the command started, for a process that was running before it (a server the machine runs).
    before: float = 0.0


def kind_of(command: str) -> str:
    return next((kind for fragment, kind in KINDS if fragment in command), "other: " + command.split(" ")[0][-40:])


def sample(seen: dict[tuple[str, str], Seen], clock_ticks: int) -> None:
    """Read every process's CPU time; a process keeps the kind of its command line when first seen."""
    own = str(os.getpid())
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or entry.name == own:
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # it ended between the listing and the read
            continue
        fields = stat.rsplit(")", 1)[1].split()
        key = (entry.name, fields[19])  # the pid and its start time: a reused pid is another process
        cpu_seconds = (int(fields[11]) + int(fields[12])) / clock_ticks
        if key in seen:
            seen[key].cpu_seconds = cpu_seconds
        elif command:  # a zombie's command line is empty: it was counted while it lived
            seen[key] = Seen(kind_of(command), fields[1], cpu_seconds)


def by_kind(seen: dict[tuple[str, str], Seen]) -> tuple[dict[str, float], collections.Counter[str]]:
    """CPU-seconds spent during the command and processes, per kind; a worker's pool processes (forked from a worker) are a kind of their own."""
    kinds = {pid: process.kind for (pid, _), process in seen.items()}
    seconds: dict[str, float] = collections.defaultdict(float)
    processes: collections.Counter[str] = collections.Counter()
    for process in seen.values():
        kind = process.kind
        if kind == "worker" and kinds.get(process.parent) == "worker":
            kind = "worker pool process"
        if process.cpu_seconds > process.before:
            seconds[kind] += process.cpu_seconds - process.before
            processes[kind] += 1
    return seconds, processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    arguments = parser.parse_args()
    command = arguments.command[1:] if arguments.command[:1] == ["--"] else arguments.command
    if not command:
        parser.error("give the command to run after --")
    clock_ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[str, str], Seen] = {}
    sample(seen, clock_ticks)
    for existing in seen.values():
        existing.before = existing.cpu_seconds
    started = time.monotonic()
    run = subprocess.Popen(command)
    while run.poll() is None:
        sample(seen, clock_ticks)
        time.sleep(0.5)
    wall = time.monotonic() - started
    seconds, processes = by_kind(seen)
    print(f"\n{' '.join(command)}: exit {run.returncode}, {wall:.0f} s wall, {sum(seconds.values()):.0f} CPU-s seen")
    for kind, cpu in sorted(seconds.items(), key=lambda item: -item[1])[:20]:
        print(f"{cpu:8.0f} CPU-s  {processes[kind]:5d} processes  {kind}")
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
