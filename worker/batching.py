"""Which jobs a worker optimises together, and how large a batch and a pass its device takes.

A worker allowed batches (`Settings.batch_limit`, then the device's free memory) claims queued jobs whose parameters
match its job's in all but the seed, and whose pictures come out the same size. A batch that ran out of memory here
sets a ceiling for later batches of its size and precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy.orm import Session

from styleq.shared.adapters.images import image_size
from styleq.shared.adapters.models import Job
from styleq.shared.adapters.settings import Settings
from styleq.shared.adapters.storage import Store
from styleq.shared.domain.memory import batch_capacity
from styleq.shared.domain.params import AUTO, TransferParams, resolve_params
from styleq.shared.service import leases

from .engine import batch_key, resolve_precision
from .engine.memory import free_device_bytes
from .engine.tiles import needs_tiles, one_pass_pixels


class BatchPlanner:
    """Sizes batches and passes for one worker's device, and claims the jobs that join a batch."""

    def __init__(
        self, settings: Settings, storage: Store, device: torch.device, transaction: Callable[[Callable[[Session], Any]], Any]
    ) -> None:
        # `transaction` runs a step in a transaction of its own, retrying while the database is briefly away (JobRunner's).
        self.settings = settings
        self.storage = storage
        self.device = device
        self._transaction = transaction
        # The batch sizes that ran out of memory here, by output size and precision: later batches stay below.
        self.ceilings: dict[tuple[tuple[int, int], str], int] = {}

    def capacity(self, params: TransferParams, size: tuple[int, int]) -> int:
        """Return how many jobs of `params` and output `size` to optimise at once here."""
        limit = self.settings.batch_limit(gpu=self.device.type == "cuda")
        if limit <= 1 or needs_tiles(size, self.pass_pixels(params, size)):
            return 1  # a tiled job runs alone: its passes already take what the device holds
        precision = resolve_precision(params.precision, self.device)
        limit = min(limit, self.ceilings.get((size, precision), limit))
        if self.device.type == "cuda":
            # Blocks the allocator keeps cached are free for a batch, but the driver counts them as used.
            torch.cuda.empty_cache()
        return batch_capacity(size[0], size[1], precision, limit=limit, free_bytes=free_device_bytes(self.device))

    def pass_pixels(self, params: TransferParams, size: tuple[int, int]) -> int | None:
        """Return the most pixels one pass of the network may take here: the setting, else what the device's free memory holds."""
        if self.settings.max_pass_pixels is not None:
            return self.settings.max_pass_pixels
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # blocks the allocator keeps cached are free for the job, but the driver counts them as used
        precision = resolve_precision(params.precision, self.device)
        return one_pass_pixels(free_device_bytes(self.device), precision, size[0] * size[1])

    def ran_out_of_memory(self, params: TransferParams, size: tuple[int, int], count: int) -> None:
        """Keep later batches of this size and precision below `count`, which did not fit."""
        self.ceilings[(size, resolve_precision(params.precision, self.device))] = max(1, count // 2)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def claim_mates(self, params: TransferParams, size: tuple[int, int], room: int, lease_owner: str, gpu: str) -> list[Job]:
        """Claim up to `room` queued jobs that can join a batch of `params` and output `size`."""
        candidates = self._transaction(lambda s: leases.batch_candidates(s))
        key = batch_key(params)
        chosen = [job.id for job in candidates if self._fits(job, key, size)][:room]
        if not chosen:
            return []
        mates: list[Job] = self._transaction(lambda s: leases.claim_batch_mates(s, chosen, lease_owner, gpu))
        for mate in mates:
            self.storage.make_job_dir(mate.id)
        return mates

    def _fits(self, job: Job, key: dict[str, Any], size: tuple[int, int]) -> bool:
        """Tell whether a queued job can join a batch of parameters `key` and output `size`."""
        try:
            params = resolve_params(job.params)
        except ValueError:
            return False  # its own run records why
        if params.scales != AUTO and batch_key(params) != key:
            return False
        if isinstance(params.size, tuple) and params.scales != AUTO:
            return params.size == size
        # A long-side size gives each picture the shape of its upright content, and scales "auto" follow the output
        # size: read the content's size from the upload's header.
        try:
            content_size = image_size(self.storage.read_upload(job.content_sha256))
        except OSError:
            return False  # its own run records why
        return batch_key(params.with_schedule(*content_size)) == key and params.output_size(*content_size) == size
