"""`python -m styleq.worker --name gpu0@host`: one worker process, as `styleq worker` starts it for each GPU."""

from __future__ import annotations

import argparse

from styleq.shared.adapters.settings import load_settings

from .launcher import run_worker

parser = argparse.ArgumentParser(prog="python -m styleq.worker")
parser.add_argument("--name", required=True)
parser.add_argument("--loglevel", default=None, help="overrides STYLEQ_LOG_LEVEL")
arguments = parser.parse_args()
run_worker(load_settings(), arguments.name, arguments.loglevel)
