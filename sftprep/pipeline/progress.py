"""Progress of a local run: records read, records/s and an ETA from the input bytes consumed.

Readers (in the launcher's process, or in worker processes with --direct_num_workers) each keep
a tally and, at most once a second, replace a small JSON file of their own in a folder the
launcher gave them; the launcher sums those files. No shared memory, no locks, and it works
whatever process runs the readers, as long as it is on this machine.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Optional, TextIO, Tuple

FLUSH_SECONDS = 1.0


class ReadTally:
    """One reader's counts, flushed to `directory/<id>.json`."""

    def __init__(self, directory: str):
        self._path = os.path.join(directory, f"{uuid.uuid4().hex}.json")
        self.records = 0
        self.bytes = 0
        self._flushed_at = 0.0

    def add(self, records: int, nbytes: int) -> None:
        self.records += records
        self.bytes += nbytes
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        temporary = self._path + ".tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump({"records": self.records, "bytes": self.bytes}, handle)
            os.replace(temporary, self._path)
        except OSError:  # progress is best effort: a vanished folder never fails a run
            pass


def read_tallies(directory: str) -> Tuple[int, int]:
    records = nbytes = 0
    for name in os.listdir(directory):
        if name.endswith(".json"):
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    tally = json.load(handle)
            except (OSError, ValueError):
                continue
            records += tally["records"]
            nbytes += tally["bytes"]
    return records, nbytes


def format_line(records: int, nbytes: int, total_bytes: int, elapsed: float) -> str:
    """
    >>> format_line(12000, 50 << 20, 200 << 20, 10.0)
    'read 12,000 records (25% of 200.0 MiB) · 1,200 records/s · ETA 0:30'
    """
    rate = records / elapsed if elapsed > 0 else 0.0
    line = f"read {records:,} records"
    if total_bytes > 0:
        share = min(nbytes / total_bytes, 1.0)
        line += f" ({share:.0%} of {total_bytes / (1 << 20):.1f} MiB)"
    line += f" · {rate:,.0f} records/s"
    if total_bytes > 0 and 0 < nbytes < total_bytes:
        remaining = elapsed * (total_bytes - nbytes) / nbytes
        line += f" · ETA {int(remaining) // 60}:{int(remaining) % 60:02d}"
    elif total_bytes > 0 and nbytes >= total_bytes:
        line += " · writing shards"
    return line


class ProgressPrinter:
    """A launcher thread printing the summed tallies: one line rewritten in place on a terminal,
    a line every `interval` seconds otherwise."""

    def __init__(self, directory: str, total_bytes: int, stream: Optional[TextIO] = None,
                 interval: Optional[float] = None):
        self._directory = directory
        self._total_bytes = total_bytes
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._interval = interval or (0.5 if self._tty else 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sftprep-progress", daemon=True)
        self._started = time.monotonic()
        self._last = ""

    def start(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._tty and self._last:
            self._stream.write("\r" + " " * len(self._last) + "\r")
            self._stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            records, nbytes = read_tallies(self._directory)
            line = "sftprep: " + format_line(records, nbytes, self._total_bytes,
                                             time.monotonic() - self._started)
            if self._tty:
                self._stream.write("\r" + line.ljust(len(self._last)))
            else:
                self._stream.write(line + "\n")
            self._stream.flush()
            self._last = line
