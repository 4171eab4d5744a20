"""The CPU's timed choice of precision, kept in a host's model directory for the host's next processes."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from styleq.shared.adapters.storage import write_atomically

log = logging.getLogger(__name__)

# The file's name in the model directory, beside the weights (every worker process and `styleq transfer` on the host).
CHOICE_FILE = "cpu-precision.json"


class ChoiceFile:
    """The engine's `ChoiceStore` as a JSON file: the choice, the ratio measured and what it was timed on."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / CHOICE_FILE

    def load(self, timed_on: dict[str, Any]) -> bool | None:
        try:
            kept = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(kept, dict) or kept.get("timed_on") != timed_on or not isinstance(kept.get("bf16_is_faster"), bool):
            return None
        return kept["bf16_is_faster"]

    def save(self, timed_on: dict[str, Any], bf16_is_faster: bool, bf16_over_fp32: float) -> None:
        record = {
            "timed_on": timed_on,
            "bf16_is_faster": bf16_is_faster,
            "bf16_over_fp32": round(bf16_over_fp32, 3),
            "timed_at": time.time(),
        }
        try:
            write_atomically(self.path, json.dumps(record, indent=1).encode())
        except OSError as error:  # a read-only model directory, a full disk: the next process times again
            log.warning("could not keep the CPU's choice of precision in %s: %s", self.path, error)
