"""Cloud Storage specifics: credentials, object metadata, and errors a user can act on.

Credentials follow Google's standard resolution through Beam's gcsio (which uses
google-cloud-storage): Application Default Credentials on a laptop (`gcloud auth
application-default login` or GOOGLE_APPLICATION_CREDENTIALS), the worker's service account on
Dataflow and GKE. One exception: against a storage emulator (STORAGE_EMULATOR_HOST is set) or
with Beam's own `--no_auth` flag, no credentials are wanted, yet Beam would spend about 20 s
per process retrying the ADC lookup before it connects anonymously. `use_anonymous_access`
answers that lookup up front with "no credentials", which is what Beam concludes anyway.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
from typing import Dict, Iterator, List, Optional, Tuple

from sftprep import storage

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_configured = threading.Event()


def use_anonymous_access(beam_args: Tuple[str, ...] = ()) -> None:
    """Skip Beam's ADC lookup in this process when no credentials are wanted (see above).

    Idempotent and cheap; called by the launcher, by every DoFn that touches storage (so
    worker processes, which inherit STORAGE_EMULATOR_HOST, skip the lookup too) and wherever
    Beam's storage is first reached. Wanted through the emulator's variable alone, it waits
    until Beam is loaded: a run that never loads Beam (inline.py) must not load it for this.
    """
    if _configured.is_set() or not (os.environ.get(EMULATOR_ENV) or "--no_auth" in beam_args):
        return
    if "--no_auth" not in beam_args and "apache_beam" not in sys.modules:
        return  # the next call, once Beam's storage is reached, sees the variable again
    from apache_beam.internal.gcp import auth

    credentials = getattr(auth, "_Credentials", None)
    if credentials is not None and hasattr(credentials, "_credentials_init"):
        with credentials._credentials_lock:
            credentials._credentials = None
            credentials._credentials_init = True
    _configured.set()


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What GCS already knows about an object: enough to fingerprint it without reading it."""

    size: int
    generation: int
    crc32c: str
    md5: Optional[str]  # absent on composite objects


def split_url(url: str) -> Tuple[str, str]:
    """
    >>> split_url("gs://bucket/a/b.jsonl")
    ('bucket', 'a/b.jsonl')
    """
    match = re.match(r"^gs://([^/]+)/?(.*)$", url)
    if not match:
        raise ValueError(f"not a gs:// URL: {url}")
    return match.group(1), match.group(2)


def _client():
    from apache_beam.io.gcp import gcsio

    use_anonymous_access()
    return gcsio.GcsIO().client


def list_objects(pattern: str) -> Dict[str, ObjectInfo]:
    """gs:// URL -> metadata of every object matching a glob, from one listing of its prefix.

    The glob means what it means to Beam (FileSystems.match): `*` stops at `/`, `**` crosses it.
    """
    bucket, name_pattern = split_url(pattern)
    prefix = re.split(r"[*?\[]", name_pattern, maxsplit=1)[0]
    matches = storage.glob_regex(name_pattern).fullmatch
    found = {}
    for blob in _iter_blobs(bucket, prefix):
        if matches(blob.name) or blob.name == name_pattern:
            found[f"gs://{bucket}/{blob.name}"] = ObjectInfo(
                int(blob.size), int(blob.generation), blob.crc32c, blob.md5_hash)
    return found


def object_info(url: str) -> ObjectInfo:
    """The metadata of one object now (for the end-of-run check that an input did not change)."""
    bucket, name = split_url(url)
    try:
        blob = find_blob(bucket, name)
    except Exception as err:  # 401, 403, credentials
        message = describe_error(url, err)
        if message is None:
            raise
        raise StorageError(message) from None
    if blob is None:
        raise StorageError(f"{url} no longer exists")
    return ObjectInfo(int(blob.size), int(blob.generation), blob.crc32c, blob.md5_hash)


def find_blob(bucket: str, name: str):
    """The object's current metadata, or None; from a listing, which carries the generation on
    Cloud Storage and on gcp-storage-emulator alike."""
    return next((blob for blob in _client().list_blobs(bucket, prefix=name)
                 if blob.name == name), None)


def list_names(prefix: str) -> List[str]:
    """The object names under a gs:// prefix (a "folder"), relative to it."""
    bucket, name = split_url(prefix.rstrip("/") + "/")
    return [blob.name[len(name):] for blob in _iter_blobs(bucket, name)]


def _iter_blobs(bucket: str, prefix: str) -> Iterator:
    from google.api_core import exceptions

    try:
        yield from _client().list_blobs(bucket, prefix=prefix)
    except exceptions.Forbidden:
        raise StorageError(f"gs://{bucket}: permission denied; the credentials in use need "
                           "storage.objects.list on it (see README, Cloud Storage)") from None
    except Exception as err:  # 404, 401, credentials missing or not refreshable
        message = describe_error(f"gs://{bucket}", err)
        if message is None:
            raise
        raise StorageError(message) from None


class StorageError(ValueError):
    """A Cloud Storage location that cannot be used, said in one line."""


def describe_error(url: str, err: BaseException) -> Optional[str]:
    """One line for a storage failure a user can fix (missing bucket, permission, credentials)."""
    if not url.startswith("gs://"):
        return None
    bucket = split_url(url)[0]
    kind = _error_kind(err)
    if kind == "missing":
        return f"gs://{bucket} does not exist (or is not visible to these credentials)"
    if kind == "forbidden":
        return (f"gs://{bucket}: permission denied for the credentials in use (Application "
                "Default Credentials or the worker's service account; see README, Cloud Storage)")
    if kind == "unauthenticated" and _configured.is_set():
        return (f"gs://{bucket}: refused without credentials, and none are sent while "
                f"{EMULATOR_ENV} or --no_auth is set")
    if kind == "unauthenticated":
        return (f"gs://{bucket}: not authenticated; run `gcloud auth application-default login` "
                "or set GOOGLE_APPLICATION_CREDENTIALS")
    return None


def _error_kind(err: BaseException) -> Optional[str]:
    """'missing', 'forbidden' or 'unauthenticated': from the error's type, or from its text when
    Beam has wrapped it in its own (BeamIOError lists the underlying errors)."""
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError, RefreshError

    if isinstance(err, exceptions.NotFound):
        return "missing"
    if isinstance(err, exceptions.Forbidden):
        return "forbidden"
    if isinstance(err, (exceptions.Unauthorized, DefaultCredentialsError, RefreshError)):
        return "unauthenticated"  # a 401; credentials absent, expired, or anonymous (refused)
    text = f"{type(err).__name__}: {err}"
    if re.search(r"\b404\b|NotFound|No such bucket|does not exist", text):
        return "missing"
    # Before 403: a 401 says the anonymous caller "does not have storage.objects.list access".
    if re.search(r"\b401\b|Unauthorized|DefaultCredentialsError|RefreshError|"
                 r"Anonymous credentials cannot be refreshed", text):
        return "unauthenticated"
    if re.search(r"\b403\b|Forbidden|PermissionDenied|does not have storage", text):
        return "forbidden"
    return None
