"""S3-compatible object storage (AWS S3, GCS, R2, MinIO, Ceph, SeaweedFS): the store of hosts that share no disk.

Objects sit at the same keys as the directory backend's files (`uploads/ab/<sha256>`,
`jobs/ab/<job id>/result.png`, ...) under `s3://bucket/prefix`. The client is boto3, configured the way
every S3 tool is: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for a store other than AWS, AWS_ACCESS_KEY_ID
and AWS_SECRET_ACCESS_KEY (or a profile, or an instance role), AWS_REGION.

How the directory's promises hold without folders, renames or locks:
- a PUT is whole or absent, so no reader sees half an object;
- a job's marker object (`.job`) stands for its folder: a worker's write after the claim checks it
  before and after its PUT, and a delete removes the marker before the objects, so a late writer
  either sees the marker gone or has its object listed, and removed, by the delete;
- states are keyed by their iteration, and the newest key is the state: a late writer's older state
  is deleted by itself (it lists after writing) or by the next save, and is never what a reader takes;
- an upload set aside for removal is copied to a hidden key and deleted, then copied back if a job
  took it up meanwhile: the same two-step judgement as the directory's rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .storage import (
    LEGACY_STATE_FILE,
    OpenedFile,
    StoredFile,
    StoreUnreachable,
    is_job_id,
    is_upload_name,
    job_file_kind,
    job_key,
    state_iteration,
    state_name,
    upload_key,
)

# The object that stands for a job's folder: there while the job's files may be written.
MARKER = ".job"
# A store that does not connect within seconds, or answer within half a minute, counts as down: the API answers 503
# at once and a worker goes on without its preview rather than waiting on a dead connection (botocore's defaults are 60 s).
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0
# botocore's standard retry mode: three tries with jittered backoff, for throttling and 5xx answers.
ATTEMPTS = 3
# Error codes that mean "no such object" (HEAD answers a bare 404).
MISSING = {"NoSuchKey", "404", "NotFound"}


class ObjectStorage:
    """A bucket and key prefix of an S3-compatible store, holding every file of one deployment."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_url(cls, url: str) -> ObjectStorage:
        """Return the store at `s3://bucket/prefix`, with the endpoint and credentials boto3 finds in the environment."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"the storage URL must be s3://bucket/prefix, got {url!r}")
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"max_attempts": ATTEMPTS, "mode": "standard"},
            # Presigned URLs signed as every store checks them (boto3 may sign them with the legacy version 2 otherwise).
            signature_version="s3v4",
        )
        session = boto3.session.Session()
        client = session.client("s3", config=config)
        if not _is_aws(client.meta.endpoint_url):
            # GCS, R2, MinIO and SeaweedFS all take path-style URLs; a bucket name as a host name needs DNS of their own.
            client = session.client("s3", config=config.merge(Config(s3={"addressing_style": "path"})))
        return cls(client, parsed.netloc, parsed.path)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (a store of the deployment's own: tests, compose)."""
        try:
            with _answers(self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
        except FileNotFoundError:
            with _answers(self.bucket):
                self.client.create_bucket(Bucket=self.bucket)

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _path(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # Objects, each call's failures as OSErrors: FileNotFoundError, StoreUnreachable, PermissionError.

    def _put(self, key: str, data: bytes) -> None:
        with _answers(key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def _get(self, key: str) -> OpenedFile:
        with _answers(key):
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        return OpenedFile(answer["Body"], answer["ContentLength"], answer["LastModified"].timestamp(), answer["ETag"].strip('"'))

    def _read(self, key: str) -> bytes:
        opened = self._get(key)
        with _answers(key), contextlib.closing(opened.stream):
            return opened.stream.read()

    def _exists(self, key: str) -> bool:
        try:
            with _answers(key):
                self.client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def _delete(self, *keys: str) -> None:
        for start in range(0, len(keys), 1000):  # the most one DeleteObjects call takes
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            with _answers(self.bucket):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def _list(self, relative: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _answers(self.bucket):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(relative)):
                yield from page.get("Contents", [])

    # Uploads.

    def save_upload(self, data: bytes) -> str:
        """Store `data` once under its sha256 and return the hash."""
        sha256 = hashlib.sha256(data).hexdigest()
        key = self._key(upload_key(sha256))
        if not self._exists(key):
            self._put(key, data)
        return sha256

    def has_upload(self, sha256: str) -> bool:
        """Tell whether the upload with this hash is stored."""
        return self._exists(self._key(upload_key(sha256)))

    def read_upload(self, sha256: str) -> bytes:
        """Return the upload's bytes (FileNotFoundError when it is not stored)."""
        return self._read(self._key(upload_key(sha256)))

    def open_upload(self, sha256: str) -> OpenedFile:
        """Open the upload for streaming (FileNotFoundError when it is not stored)."""
        return self._get(self._key(upload_key(sha256)))

    def delete_upload(self, sha256: str) -> None:
        """Remove an upload that no job refers to any more."""
        self._delete(self._key(upload_key(sha256)))

    def set_aside_upload(self, sha256: str) -> str | None:
        """Copy the upload to a hidden key and delete it; return the hidden object's path (None if it is not stored)."""
        key = self._key(upload_key(sha256))
        aside = f"{key}.{uuid.uuid4().hex}.expiring"
        try:
            with _answers(key):
                self.client.copy_object(Bucket=self.bucket, Key=aside, CopySource={"Bucket": self.bucket, "Key": key})
        except FileNotFoundError:
            return None
        self._delete(key)
        return self._path(aside)

    def restore_upload(self, sha256: str, aside: str) -> None:
        """Copy an upload `set_aside_upload` hid back to its key, and drop the hidden copy."""
        hidden = self._key_of(aside)
        with _answers(hidden):
            self.client.copy_object(
                Bucket=self.bucket, Key=self._key(upload_key(sha256)), CopySource={"Bucket": self.bucket, "Key": hidden}
            )
        self._delete(hidden)

    # Jobs' files.

    def _marker(self, job_id: str) -> str:
        return self._key(job_key(job_id, LEGACY_STATE_FILE)).rsplit("/", 1)[0] + "/" + MARKER

    def make_job_dir(self, job_id: str) -> None:
        """Put the job's marker: its files may be written from now on (a worker does, once its claim is committed)."""
        self._put(self._marker(job_id), b"")

    def _write_unless_deleted(self, job_id: str, key: str, data: bytes) -> None:
        """PUT `key` while the job's marker stands; FileNotFoundError (and nothing left behind) once the job was deleted."""
        marker = self._marker(job_id)
        if not self._exists(marker):
            raise FileNotFoundError(f"job {job_id} was deleted")
        self._put(key, data)
        # A delete that began after the check above may have listed the job's objects before this PUT landed.
        if not self._exists(marker):
            self._delete(key)
            raise FileNotFoundError(f"job {job_id} was deleted")

    def write_job_file(self, job_id: str, name: str, data: bytes, *, create: bool = True) -> str:
        """Write one of the job's files whole and return its path; with `create=False` FileNotFoundError if the job was deleted."""
        key = self._key(job_key(job_id, name))
        if create:
            self.make_job_dir(job_id)
            self._put(key, data)
        else:
            self._write_unless_deleted(job_id, key, data)
        return self._path(key)

    def read_job_file(self, job_id: str, name: str) -> bytes:
        """Return one of the job's files (FileNotFoundError when it is not there)."""
        return self._read(self._key(job_key(job_id, name)))

    def open_job_file(self, job_id: str, name: str) -> OpenedFile:
        """Open one of the job's files for streaming (FileNotFoundError when it is not there)."""
        return self._get(self._key(job_key(job_id, name)))

    def has_job_file(self, job_id: str, name: str) -> bool:
        """Tell whether one of the job's files is there."""
        return self._exists(self._key(job_key(job_id, name)))

    def _states(self, job_id: str) -> list[tuple[int, str]]:
        folder = self._marker(job_id).rsplit("/", 1)[0] + "/"
        found = ((state_iteration(item["Key"].rsplit("/", 1)[-1]), item["Key"]) for item in self._list(folder[len(self._key("")) :]))
        return sorted((iteration, key) for iteration, key in found if iteration is not None)

    def save_state(self, job_id: str, iteration: int, data: bytes) -> bool:
        """Keep `data` as the job's state at `iteration`, unless a state as new is saved; return whether it was kept.

        Raises FileNotFoundError when the job was deleted.
        """
        existing = self._states(job_id)
        if existing and existing[-1][0] >= iteration:
            return False
        key = self._key(job_key(job_id, state_name(iteration)))
        self._write_unless_deleted(job_id, key, data)
        after = self._states(job_id)
        if after and after[-1][0] > iteration:
            # A newer state landed meanwhile (its writer listed before this one wrote): this one is stale.
            self._delete(key)
            return False
        self._delete(*(older for _, older in existing), self._key(job_key(job_id, LEGACY_STATE_FILE)))
        return True

    def load_state(self, job_id: str) -> bytes | None:
        """Return the job's newest saved state, or None."""
        for _ in range(3):  # the newest replaced between listing and reading: list again
            states = self._states(job_id)
            key = states[-1][1] if states else self._key(job_key(job_id, LEGACY_STATE_FILE))
            try:
                return self._read(key)
            except FileNotFoundError:
                if not states:
                    return None
        return None

    def delete_states(self, job_id: str) -> None:
        """Remove the job's saved states: a job that has ended will not resume."""
        self._delete(*(key for _, key in self._states(job_id)), self._key(job_key(job_id, LEGACY_STATE_FILE)))

    def delete_job_files(self, job_id: str) -> None:
        """Remove the job's marker, then every object of the job: no write begun after this lists again."""
        marker = self._marker(job_id)
        self._delete(marker)
        folder = marker.rsplit("/", 1)[0] + "/"
        self._delete(*(item["Key"] for item in self._list(folder[len(self._key("")) :])))

    # The whole store.

    def walk(self) -> Iterator[StoredFile]:
        """Yield every object in the store, uploads then jobs' files (markers left out: they are the folders)."""
        for area in ("uploads/", "jobs/"):
            for item in self._list(area):
                parts = item["Key"][len(self._key(area)) :].split("/")
                kind, owner = "other", ""
                if area == "uploads/" and len(parts) == 2 and is_upload_name(parts[1]):
                    kind, owner = "upload", parts[1]
                elif area == "jobs/" and len(parts) == 3 and is_job_id(parts[1]):
                    if parts[2] == MARKER:
                        continue
                    kind = job_file_kind(parts[2])
                    owner = parts[1] if kind != "other" else ""
                yield StoredFile(kind, owner, self._path(item["Key"]), item["Size"], item["LastModified"].timestamp())

    def _key_of(self, path: str) -> str:
        root = self._path(self._key(""))
        if not path.startswith(root):
            raise ValueError(f"{path!r} is not in the store {self.location}")
        return path[len(f"s3://{self.bucket}/") :]

    def remove_file(self, path: str) -> None:
        """Remove an object `walk` found (FileNotFoundError when it is gone already)."""
        key = self._key_of(path)
        if not self._exists(key):
            raise FileNotFoundError(path)
        self._delete(key)

    def presigned_url(self, job_id: str, name: str, *, seconds: int, media_type: str, download_name: str) -> str | None:
        """Return a URL that lets its holder GET the job's file for `seconds`, named and typed as the API would send it."""
        params = {
            "Bucket": self.bucket,
            "Key": self._key(job_key(job_id, name)),
            "ResponseContentType": media_type,
            "ResponseContentDisposition": f'inline; filename="{download_name}"',
        }
        with _answers(name):
            return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds))


def _is_aws(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


@contextlib.contextmanager
def _answers(what: str) -> Iterator[None]:
    """Turn the store's refusals into the OSErrors callers already handle for a directory."""
    try:
        yield
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            # Every object is out of reach, not missing: an operator's to fix (or a store that lost its data).
            raise StoreUnreachable(f"the object store has no bucket for {what}: {error}") from error
        if code in MISSING or status == 404:
            raise FileNotFoundError(what) from None
        if code in ("AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise PermissionError(f"the object store refused access to {what} ({code})") from error
        raise StoreUnreachable(f"the object store failed on {what}: {code or status} {error}") from error
    except BotoCoreError as error:
        # No connection, a timeout, a connection cut mid-answer: the store is down or out of reach.
        raise StoreUnreachable(f"the object store did not answer on {what}: {error}") from error
