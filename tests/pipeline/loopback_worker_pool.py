"""Beam's external SDK worker pool, served on 127.0.0.1 only (Beam's own main binds [::]).

    python3 -m tests.pipeline.loopback_worker_pool PORT_FILE

Writes the chosen port to PORT_FILE, then serves until killed. Workers run as threads of this
process, so sftprep must be importable here (PYTHONPATH), as on any real worker.
"""

from __future__ import annotations

import pathlib
import sys
import time

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor


def main(port_file: str) -> None:
    server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    port = server.add_insecure_port("127.0.0.1:0")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
        BeamFnExternalWorkerPoolServicer(), server)
    server.start()
    pathlib.Path(port_file).write_text(str(port))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1])
