"""One writer per output: a lock taken at launch, held with a lease, released on every exit.

The lock is `OUT/.sftprep-lock.json`: owner, host, pid, a random token and the time its lease
expires. A background thread renews the lease every quarter of it. A second run on the same
output refuses in one line. A lock is stale, and taken over, when its lease has expired, or when
it names this host and a pid that is no longer running (a killed run).

- Local disk: reading, judging and replacing the lock happen under flock() of the output folder,
  so two runs on one host never both take it; the file is replaced by rename (atomic).
- gs://: the lock object is created with `if_generation_match=0` (only if absent) and a stale
  one replaced with `if_generation_match=<its generation>`, so Cloud Storage lets one run win.
  gcp-storage-emulator ignores these preconditions: against it (STORAGE_EMULATOR_HOST set) the
  run also reads the lock back after a short pause and refuses when another run's token is there.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Iterator, Optional, Tuple

from sftprep.config import ConfigError
from sftprep.pipeline import files, gcs

LOCK = ".sftprep-lock.json"
LEASE_SECONDS = 120.0
EMULATOR_SETTLE_SECONDS = 1.0


class OutputLock:
    """The lock of one output folder (local or gs://); use as a context manager."""

    def __init__(self, output: str, lease_seconds: float = LEASE_SECONDS):
        self.output = output
        self.path = files.join(output, LOCK)
        self.lease_seconds = lease_seconds
        self.token = uuid.uuid4().hex
        self.lost = False  # set when another run took the lock over (our lease had expired)
        self._generation: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- what the lock says

    def _document(self) -> bytes:
        try:
            owner = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in some containers
            owner = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        return json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "lease_seconds": self.lease_seconds,
                           "expires": time.time() + self.lease_seconds}, sort_keys=True).encode()

    def _busy(self, held: Dict[str, Any]) -> ConfigError:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(held.get("expires", 0))))
        return ConfigError(
            f"--output {self.output} is in use by another sftprep run ({held.get('owner')}@"
            f"{held.get('host')}, pid {held.get('pid')}, lease until {until}); wait for it to "
            f"finish, or delete {self.path} if that run is gone")

    # -- taking and giving back

    def acquire(self) -> None:
        if self.output.startswith("gs://"):
            self._acquire_gcs()
        else:
            self._acquire_local()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True,
                                        name="sftprep-lock-lease")
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            if self.output.startswith("gs://"):
                self._release_gcs()
            else:
                with _folder_flock(self.output):
                    held = _read_json(self.path)
                    if held and held.get("token") == self.token:
                        os.remove(self.path)
        except Exception:  # noqa: BLE001 - a lock left behind expires with its lease
            pass

    def _renew_until_stopped(self) -> None:
        while not self.lost and not self._stop.wait(self.lease_seconds / 4):
            with contextlib.suppress(Exception):  # retried at the next tick
                self._renew()

    def _renew(self) -> None:
        if self.output.startswith("gs://"):
            from google.api_core import exceptions

            try:
                self._generation = _upload(self.path, self._document(), self._generation)
            except exceptions.PreconditionFailed:
                self.lost = True
            return
        with _folder_flock(self.output):
            held = _read_json(self.path)
            if not held or held.get("token") != self.token:
                self.lost = True
                return
            files.replace_bytes(self.path, self._document())

    # -- local disk

    def _acquire_local(self) -> None:
        try:
            os.makedirs(self.output, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--output {self.output} cannot be created: {err.strerror}") from None
        if not os.access(self.output, os.W_OK):
            raise ConfigError(f"--output {self.output} is not writable")
        with _folder_flock(self.output):
            held = _read_json(self.path)
            if held is not None and not stale(held):
                raise self._busy(held)
            files.replace_bytes(self.path, self._document())

    # -- gs://

    def _acquire_gcs(self) -> None:
        from google.api_core import exceptions

        try:
            held, generation = _read_object(self.path)
            if held is not None and not stale(held):
                raise self._busy(held)
            try:  # absent: create only if still absent; stale: replace only that generation
                self._generation = _upload(self.path, self._document(), generation or 0)
            except exceptions.PreconditionFailed:
                raise self._busy(_read_object(self.path)[0] or {}) from None
            if os.environ.get(gcs.EMULATOR_ENV):  # no preconditions there: look again
                time.sleep(EMULATOR_SETTLE_SECONDS)
                now, _ = _read_object(self.path)
                if not now or now.get("token") != self.token:
                    raise self._busy(now or {})
        except ConfigError:
            raise
        except Exception as err:  # 403, 404, credentials
            message = gcs.describe_error(self.output, err)
            if message is None:
                raise
            raise ConfigError(f"--output {self.output}: {message}") from None

    def _release_gcs(self) -> None:
        bucket, name = gcs.split_url(self.path)
        blob = gcs._client().bucket(bucket).blob(name)
        held, generation = _read_object(self.path)
        if held and held.get("token") == self.token:
            blob.delete(if_generation_match=generation)


def stale(held: Dict[str, Any]) -> bool:
    """A lock nobody holds any more: its lease expired, or its process on this host is gone."""
    try:
        if float(held.get("expires", 0)) < time.time():
            return True
        if held.get("host") == socket.gethostname():
            return not _pid_alive(int(held.get("pid", -1)))
    except (TypeError, ValueError):
        return True  # unreadable: no one can renew it
    return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: stale
    return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def _folder_flock(folder: str) -> Iterator[None]:
    """Exclusive flock() of the folder itself: a short critical section between local runs."""
    import fcntl

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing drops the flock


def _read_object(url: str) -> Tuple[Optional[Dict[str, Any]], Optional[int]]:
    bucket, name = gcs.split_url(url)
    blob = gcs.find_blob(bucket, name)
    if blob is None:
        return None, None
    generation = int(blob.generation)  # before the download, which may reset it from headers
    try:
        value = json.loads(blob.download_as_bytes())
    except ValueError:
        value = {}
    return (value if isinstance(value, dict) else {}), generation


def _upload(url: str, data: bytes, if_generation_match: Optional[int]) -> int:
    bucket, name = gcs.split_url(url)
    blob = gcs._client().bucket(bucket).blob(name)
    blob.upload_from_string(data, content_type="application/json",
                            if_generation_match=if_generation_match)
    return int(blob.generation)
