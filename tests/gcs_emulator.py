"""A real Cloud Storage server for tests: gcp-storage-emulator on 127.0.0.1, in memory.

Started once per test session by the `gcs` fixture (tests/conftest.py) and stopped after it.
`refusing_server` stands in for a private bucket that the caller is not authenticated for.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
from typing import Dict, Iterator

from sftprep.pipeline.gcs import EMULATOR_ENV

BUCKET = "sftprep-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Emulator:
    def __init__(self, url: str):
        self.url = url

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials())

    def upload(self, local: pathlib.Path, url: str) -> None:
        bucket, name = url[len("gs://"):].split("/", 1)
        self.client().bucket(bucket).blob(name).upload_from_filename(str(local))

    def upload_bytes(self, data: bytes, url: str) -> None:
        bucket, name = url[len("gs://"):].split("/", 1)
        self.client().bucket(bucket).blob(name).upload_from_string(data)

    def read_tree(self, url: str) -> Dict[str, bytes]:
        """Every object under a gs:// prefix, by its name relative to the prefix."""
        bucket, prefix = url[len("gs://"):].rstrip("/").split("/", 1)
        return {blob.name[len(prefix) + 1:]: blob.download_as_bytes()
                for blob in self.client().list_blobs(bucket, prefix=prefix + "/")}


@contextlib.contextmanager
def running_emulator() -> Iterator[Emulator]:
    executable = shutil.which("gcp-storage-emulator")
    if executable is None:
        raise RuntimeError("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    port = _free_port()
    process = subprocess.Popen(
        [executable, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
         "--default-bucket", BUCKET, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded wait for the port
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
        previous = os.environ.get(EMULATOR_ENV)
        os.environ[EMULATOR_ENV] = f"http://127.0.0.1:{port}"
        try:
            yield Emulator(os.environ[EMULATOR_ENV])
        finally:
            if previous is None:
                os.environ.pop(EMULATOR_ENV, None)
            else:
                os.environ[EMULATOR_ENV] = previous
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request as GCS answers an unauthenticated caller on a private bucket."""

    def _refuse(self) -> None:
        message = ("Anonymous caller does not have storage.objects.list access to the Google "
                   "Cloud Storage bucket. Permission 'storage.objects.list' denied on resource "
                   "(or it may not exist).")
        body = json.dumps({"error": {"code": 401, "message": message, "errors": [
            {"message": message, "domain": "global", "reason": "required",
             "locationType": "header", "location": "Authorization"}]}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def refusing_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers everything with 401; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
