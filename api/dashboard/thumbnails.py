"""Small JPEG copies of a job's images for the jobs list, so a page of jobs does not load every full-size upload."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable

from flask import Response, send_file

from styleq.shared.adapters.images import decode_image
from styleq.shared.adapters.outputs import job_format
from styleq.shared.adapters.storage import OpenedFile
from styleq.shared.domain.errors import NotFound
from styleq.shared.service import jobs

from ..auth import current_key
from ..backends import backends, db_session
from ..files import IMMUTABLE, with_cache_control
from . import bp

THUMBNAIL_PIXELS = 160  # the long side: sharp at 80 CSS pixels on a 2x screen
CACHE_ENTRIES = 512
_cache: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
_cache_lock = threading.Lock()


@bp.get("/thumbnails/<job_id>/<name>.jpg")
def show_thumbnail(job_id: str, name: str) -> Response:
    """Send a thumbnail of the job's content, style, preview or result."""
    job = jobs.get_job(db_session(), current_key(), job_id)
    db_session().rollback()
    storage = backends().storage
    sources: dict[str, Callable[[], OpenedFile]] = {
        "content": lambda: storage.open_upload(job.content_sha256),
        "style": lambda: storage.open_upload(job.style_hashes[0]),
        "preview": lambda: storage.open_job_file(job.id, "preview.jpg"),
        "result": lambda: storage.open_job_file(job.id, job_format(job.params).file_name),
    }
    if name not in sources:
        raise NotFound(f"no thumbnail {name!r}; expected one of {', '.join(sources)}")
    try:
        data, etag = thumbnail(f"{job.id}/{name}", sources[name]())
    except FileNotFoundError:
        raise NotFound(f"job {job.id} has no {name} image (yet)") from None
    response = send_file(io.BytesIO(data), mimetype="image/jpeg", etag=etag, conditional=True)
    # A preview is replaced as the job runs; the other three never change once written.
    return with_cache_control(response, "no-cache" if name == "preview" else IMMUTABLE)


def thumbnail(name: str, opened: OpenedFile) -> tuple[bytes, str]:
    """Return a JPEG thumbnail of the opened file (the job's `name`) and its ETag, made once per version of the file."""
    key = (name, opened.etag, opened.size)
    etag = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    with opened.stream:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key], etag
        source = opened.stream.read()
    # Decoded as the worker decodes it (upright, 16-bit scaled, alpha on white), so the thumbnail shows what runs;
    # a JPEG decodes at a fraction of its size. The upload was checked against the pixel limit when it came in.
    small = decode_image(source, max_pixels=None, reduce_to=THUMBNAIL_PIXELS)
    small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    data = buffer.getvalue()
    with _cache_lock:
        _cache[key] = data
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return data, etag
