"""Small JPEG copies of a job's images for the jobs list, so a page of jobs does not load every full-size upload."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

from flask import Response, send_file

from shared import jobs
from shared.errors import NotFound
from shared.images import decode_image
from shared.outputs import job_format

from ..auth import current_key
from ..backends import backends, db_session
from ..files import IMMUTABLE, with_cache_control
from . import bp

THUMBNAIL_PIXELS = 160  # the long side: sharp at 80 CSS pixels on a 2x screen
CACHE_ENTRIES = 512
_cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
_cache_lock = threading.Lock()


@bp.get("/thumbnails/<job_id>/<name>.jpg")
def show_thumbnail(job_id: str, name: str) -> Response:
    """Send a thumbnail of the job's content, style, preview or result."""
    job = jobs.get_job(db_session(), current_key(), job_id)
    db_session().rollback()
    storage = backends().storage
    sources = {
        "content": storage.upload_path(job.content_sha256),
        "style": storage.upload_path(job.style_hashes[0]),
        "preview": storage.job_path(job.id, "preview.jpg"),
        "result": storage.job_path(job.id, job_format(job.params).file_name),
    }
    if name not in sources:
        raise NotFound(f"no thumbnail {name!r}; expected one of {', '.join(sources)}")
    try:
        data, etag = thumbnail(sources[name])
    except FileNotFoundError:
        raise NotFound(f"job {job.id} has no {name} image (yet)") from None
    response = send_file(io.BytesIO(data), mimetype="image/jpeg", etag=etag, conditional=True)
    # A preview is replaced as the job runs; the other three never change once written.
    return with_cache_control(response, "no-cache" if name == "preview" else IMMUTABLE)


def thumbnail(path: Path) -> tuple[bytes, str]:
    """Return a JPEG thumbnail of the image at `path` and its ETag, made once per version of the file."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    etag = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], etag
    # Decoded as the worker decodes it (upright, 16-bit scaled, alpha on white), so the thumbnail shows what runs;
    # a JPEG decodes at a fraction of its size. The upload was checked against the pixel limit when it came in.
    small = decode_image(path, max_pixels=None, reduce_to=THUMBNAIL_PIXELS)
    small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    data = buffer.getvalue()
    with _cache_lock:
        _cache[key] = data
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return data, etag
