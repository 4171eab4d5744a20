"""`python -m bench.suite_cpu` says where a command's CPU went, by kind of process."""

from __future__ import annotations

import re
import subprocess
import sys

from bench.suite_cpu import Seen, by_kind, kind_of


def test_processes_are_named_by_kind_and_a_workers_children_are_its_pool():
    assert kind_of("/venv/bin/python -m styleq.worker --name w1@test") == "worker"
    assert kind_of("/venv/bin/python -m gunicorn -c python:styleq.api.gunicorn_config") == "gunicorn"
    assert kind_of("/usr/bin/redis-server 127.0.0.1:6379") == "redis"
    seen = {
        ("10", "1"): Seen("worker", "1", 3.0),
        ("11", "2"): Seen("worker", "10", 20.0),
        ("12", "3"): Seen("postgres", "1", 105.0, before=100.0),
    }

    seconds, processes = by_kind(seen)

    # A server already running counts only what it spent during the command.
    assert dict(seconds) == {"worker": 3.0, "worker pool process": 20.0, "postgres": 5.0}
    assert dict(processes) == {"worker": 1, "worker pool process": 1, "postgres": 1}


def test_a_command_that_burns_a_second_of_cpu_is_seen_spending_it():
    burn = "import time; end = time.process_time() + 1.5\nwhile time.process_time() < end: pass"
    result = subprocess.run(
        [sys.executable, "-m", "bench.suite_cpu", "--", sys.executable, "-c", burn], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "other:" in line and "python" in line)
    assert float(re.match(r"\s*([\d.]+) CPU-s", line).group(1)) >= 1
