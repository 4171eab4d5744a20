"""A job's images: the result, the latest preview, and the uploads it was made from."""

from __future__ import annotations

import io
from typing import IO

from flask import Blueprint, Response, redirect, send_file
from werkzeug.wrappers import Response as WerkzeugResponse

from styleq.shared.adapters.images import MEDIA_TYPE_BYTES, media_type
from styleq.shared.adapters.models import Job, JobStatus
from styleq.shared.adapters.outputs import FORMATS, job_format
from styleq.shared.adapters.storage import OpenedFile
from styleq.shared.domain.errors import Conflict, Gone, NotFound
from styleq.shared.domain.params import style_roles
from styleq.shared.service import jobs

from .auth import current_key
from .backends import backends, db_session
from .documented import NOT_MODIFIED, described, error, image, job_operation

bp = Blueprint("files", __name__)
# The types an upload may have, served back as they came.
UPLOAD_MIMETYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff"]
# The types a result may have: one per `format` (shared/adapters/outputs.py FORMATS).
RESULT_MIMETYPES = [output.media_type for output in FORMATS.values()]
# An upload's answers: it, or 410 once the retention sweep has removed it (the job's record stays).
UPLOAD_RESPONSES = {
    "200": image("The upload, in its own format.", UPLOAD_MIMETYPES, "private, max-age=86400, immutable"),
    **NOT_MODIFIED,
    "410": error("upload_expired: the upload was removed when its retention ended (after the last job using it); the job's record stays."),
}
IMMUTABLE = "private, max-age=86400, immutable"


@bp.get("/jobs/<job_id>/result")
@described(
    job_operation(
        "Download the finished picture.",
        {
            "200": image(
                "The result, in the job's `format` (png, jpeg or webp), with Content-Disposition naming it `<job id>.png`, "
                "`.jpg` or `.webp`; the job's parameters are inside it as JSON (PNG tEXt `Description`, EXIF ImageDescription).",
                RESULT_MIMETYPES,
                "private, max-age=86400, immutable",
            ),
            "307": {
                "description": "With object storage and STYLEQ_RESULT_URL_SECONDS set: the result is at a presigned URL of the "
                "store, valid that many seconds, which serves the same bytes and headers; follow the redirect.",
                "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
            },
            **NOT_MODIFIED,
            "409": error("not_ready."),
            "410": error("result_expired: the result was removed when its retention ended; the job's record stays."),
        },
    )
)
def show_result(job_id: str) -> WerkzeugResponse:
    """Send the finished picture in the job's format (PNG, JPEG or WebP), named `<job id>.<extension>`; 410 once the retention sweep has removed it."""
    job = own_job(job_id)
    if job.result_expired_at is not None:
        raise Gone(
            f"the result of job {job.id} was removed on {job.result_expired_at:%Y-%m-%d}, as this service keeps results only "
            "for a while after their job ends; submit the job again to make it anew",
            code="result_expired",
        )
    output = job_format(job.params)
    storage, seconds = backends().storage, backends().settings.result_url_seconds
    download_name = f"{job.id}.{output.extension}"
    if seconds and storage.has_job_file(job.id, output.file_name):
        url = storage.presigned_url(job.id, output.file_name, seconds=seconds, media_type=output.media_type, download_name=download_name)
        if url is not None:
            # The store serves the bytes; the redirect itself must not outlive the URL, so no cache keeps it.
            moved = redirect(url, 307)
            moved.headers["Cache-Control"] = "no-store"
            return moved
    try:
        opened = storage.open_job_file(job.id, output.file_name)
    except FileNotFoundError:
        raise Conflict(not_ready(job, "result"), code="not_ready") from None
    return send_stored(opened, output.media_type, IMMUTABLE, download_name=download_name)


@bp.get("/jobs/<job_id>/preview")
@described(
    job_operation(
        "Download the latest preview of a running job.",
        {
            "200": image("The preview.", ["image/jpeg"], "no-cache"),
            **NOT_MODIFIED,
            "409": error("not_ready."),
            "410": error("preview_expired: the job ended and its preview was removed when its retention ended; the job's record stays."),
        },
    )
)
def show_preview(job_id: str) -> Response:
    """Send the latest preview (JPEG), which the worker replaces as the job runs; 410 once the retention sweep has removed it."""
    job = own_job(job_id)
    try:
        opened = backends().storage.open_job_file(job.id, "preview.jpg")
    except FileNotFoundError:
        # A job's first checkpoint always writes a preview: a finished job that had one and has none now had it removed.
        if job.status.finished and job.iteration > 0:
            raise Gone(
                removed(f"the preview of job {job.id}", "previews", "keep_previews_days", "their job ends")
                + (
                    "; the finished picture is at its result" if job.status is JobStatus.SUCCEEDED and job.result_expired_at is None else ""
                ),
                code="preview_expired",
            ) from None
        raise Conflict(not_ready(job, "preview"), code="not_ready") from None
    # no-cache with an ETag: the client revalidates every time and gets 304 until a new preview lands.
    return send_stored(opened, "image/jpeg", "no-cache")


@bp.get("/jobs/<job_id>/content")
@described(job_operation("Download the uploaded content image.", UPLOAD_RESPONSES))
def show_content(job_id: str) -> Response:
    """Send the uploaded content image; 410 once the retention sweep has removed it."""
    job = own_job(job_id)
    return send_upload(job, job.content_sha256, "content")


@bp.get("/jobs/<job_id>/style")
@described(job_operation("Download the uploaded style image (the first of a blend).", UPLOAD_RESPONSES))
def show_style(job_id: str) -> Response:
    """Send the uploaded style image (the first, for a blend of several); 410 once the retention sweep has removed it."""
    job = own_job(job_id)
    return send_upload(job, job.style_hashes[0], style_roles(len(job.style_hashes))[0])


@bp.get("/jobs/<job_id>/styles/<int:index>")
@described(
    job_operation(
        "Download one of the job's uploaded style images, counted from 0 in the order given (the job's `styles`).",
        UPLOAD_RESPONSES,
        [
            {
                "name": "index",
                "in": "path",
                "required": True,
                "description": "The style's place, from 0.",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
    )
)
def show_blended_style(job_id: str, index: int) -> Response:
    """Send one of the job's uploaded style images, counted from 0 in the order given."""
    job = own_job(job_id)
    hashes = job.style_hashes
    if index >= len(hashes):
        raise NotFound(f"job {job_id} has {len(hashes)} style image(s), numbered from 0; there is no style {index}")
    return send_upload(job, hashes[index], style_roles(len(hashes))[index])


def own_job(job_id: str) -> Job:
    """Return the client's job, closing the request's session: serving a file needs no transaction."""
    job = jobs.get_job(db_session(), current_key(), job_id)
    db_session().rollback()
    return job


def not_ready(job: Job, name: str) -> str:
    """Say why the job's `name` file is not there."""
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return f"job {job.id} is {job.status} and has no {name} yet; follow its events and try again"
    if job.status is JobStatus.SUCCEEDED:
        return f"job {job.id} succeeded but its {name} is not in storage"
    return f"job {job.id} ended {job.status} and has no {name}"


def send_stored(
    opened: OpenedFile, mimetype: str, cache_control: str, *, etag: str | None = None, download_name: str | None = None
) -> Response:
    """Stream an opened stored file with its ETag (the store's version tag unless `etag` is given), answering 304 where the client has it.

    A `download_name` is the file name a browser saves it under (Content-Disposition: inline; filename=...).
    A file in a local directory is sent by its path (byte ranges, sendfile); an object's body is streamed as it comes.
    """
    if opened.path is not None:
        opened.stream.close()
        response = send_file(opened.path, mimetype=mimetype, conditional=True, etag=etag or True, download_name=download_name)
    else:
        response = send_file(
            opened.stream,
            mimetype=mimetype,
            conditional=True,
            etag=etag or opened.etag,
            last_modified=opened.modified,
            download_name=download_name,
        )
        if response.status_code == 200:
            response.content_length = opened.size
    return with_cache_control(response, cache_control)


def send_upload(job: Job, sha256: str, role: str) -> Response:
    """Send the job's `role` upload ("content", "style", "style 2"...); its hash is its ETag, since its bytes never change.

    Raises:
        Gone: the upload is no longer stored (uploads go only by the retention sweep while their job's row stays).
    """
    try:
        opened = backends().storage.open_upload(sha256)
    except FileNotFoundError:
        raise Gone(
            removed(f"the {role} image of job {job.id}", "uploads", "keep_uploads_days", "the last job using them ends")
            + "; submit the job again with the image to run it anew",
            code="upload_expired",
        ) from None
    # The format is in the upload's first bytes, read ahead of the rest of the stream and put back in front of it.
    head = opened.stream.read(MEDIA_TYPE_BYTES)
    opened.stream = io.BufferedReader(_Prefixed(head, opened.stream))
    return send_stored(opened, media_type(head), IMMUTABLE, etag=sha256)


def removed(what: str, kind: str, setting: str, after: str) -> str:
    """Say that `what` was removed, and by which rule: "... was removed, as this service keeps previews only for 7 days after ..."."""
    days = getattr(backends().settings, setting)
    if days > 0:
        return f"{what} was removed, as this service keeps {kind} only for {days:g} days after {after}"
    return f"{what} is no longer in storage"


def with_cache_control(response: Response, value: str) -> Response:
    """Replace the response's caching headers with `value`."""
    response.headers["Cache-Control"] = value
    response.headers.pop("Expires", None)
    return response


class _Prefixed(io.RawIOBase):
    """A stream of `head` then the rest of `rest`: a stream whose first bytes were read ahead, whole again."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # RawIOBase types it as a WriteableBuffer
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._rest.close()
        super().close()
