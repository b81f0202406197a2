"""Keep the workers' copies of a RunFailed traceback off the terminal.

Worker processes of a local multi-process run share the launcher's stderr, and Beam's worker
prints the traceback of every failed bundle there itself, before any logging. A run that fails
its final checks raises RunFailed in a worker; sftprep says why in its own line. While such a
run is in flight, file descriptor 2 goes through `HideFailureTracebacks`: everything passes as
it comes (progress lines included), except a traceback block that names RunFailed.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import List, Optional

_START = b"Traceback (most recent call last):"
_CHAIN = (b"During handling of the above exception", b"The above exception was the direct")


class HideFailureTracebacks:
    """A context manager: fd 2 through a pipe, filtered by a thread, restored on exit."""

    def __init__(self, hidden: bytes = b"RunFailed: "):
        self._hidden = hidden
        self._saved: Optional[int] = None
        self._read: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._pending = b""
        self._block: Optional[List[bytes]] = None
        self._state = "in"
        self._mid_line = False  # part of the current line was passed on already

    def __enter__(self) -> "HideFailureTracebacks":
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, daemon=True,
                                        name="sftprep-stderr-filter")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe ends when the workers, gone by now, let it go
        self._thread.join(5)
        if not self._thread.is_alive():
            os.close(self._read)
        os.close(self._saved)

    # -- the filter

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            self._feed(chunk)
        self._feed(b"", final=True)

    def _emit(self, data: bytes) -> None:
        if data:
            os.write(self._saved, data)

    def _feed(self, data: bytes, final: bool = False) -> None:
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            self._line(line + b"\n")
        tail = self._pending
        if final:
            if tail:
                self._line(tail)
            self._pending = b""
            self._end_block()
        elif tail and self._block is None and (self._mid_line or not _START.startswith(tail)):
            self._emit(tail)  # a progress line in place (\r), or any unfinished line
            self._pending, self._mid_line = b"", True

    def _line(self, line: bytes) -> None:
        if self._mid_line:
            self._mid_line = False
            self._emit(line)
            return
        if self._block is not None:
            text = line.rstrip(b"\r\n")
            if self._state == "gap" and not text.startswith(_CHAIN):
                self._end_block()
            else:
                self._block.append(line)
                if text.startswith(_CHAIN) or text.startswith(_START):
                    self._state = "in"
                elif self._state == "in" and text and not line.startswith((b" ", b"\t")):
                    self._state = "exception"
                elif self._state == "exception" and not text:
                    self._state = "gap"
                return
        if line.startswith(_START):
            self._block, self._state = [line], "in"
            return
        self._emit(line)

    def _end_block(self) -> None:
        block, self._block = self._block, None
        if block is not None and not any(self._hidden in line for line in block):
            self._emit(b"".join(block))
