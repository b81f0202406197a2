"""A headless Chromium driven over the DevTools protocol, enough to check a local page.

Starts Debian's `chromium` with remote debugging on 127.0.0.1 (a free port it picks itself),
attaches to its page over a websocket, records console messages, uncaught exceptions, log
errors and every network request, and can evaluate JavaScript and take a full-page screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from typing import Any, Dict, List, Optional

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")


def find_chromium() -> Optional[str]:
    for candidate in CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


class Page:
    """One browser with one page. Use as a context manager."""

    def __init__(self, binary: str, profile_dir: str, timeout: float = 30.0):
        from websockets.sync.client import connect

        self.timeout = timeout
        self.events: List[Dict[str, Any]] = []
        self._next_id = 0
        self._log = open(os.path.join(profile_dir, "chromium.log"), "wb")
        self._process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile_dir}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        try:
            port = self._wait_for_port(os.path.join(profile_dir, "DevToolsActivePort"))
            self._socket = connect(self._page_socket_url(port), max_size=None,
                                   open_timeout=timeout)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait_for_port(self, path: str) -> int:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}")
            if os.path.exists(path):
                lines = open(path, encoding="utf-8").read().split("\n")
                if len(lines) >= 2 and lines[0].strip():
                    return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def _page_socket_url(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.05)
        raise TimeoutError("chromium opened no page")

    def call(self, method: str, **params) -> Dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._next_id += 1
        message_id = self._next_id
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self._socket.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, event: str) -> Dict[str, Any]:
        for message in self.events:
            if message["method"] == event:
                return message
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self._socket.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if "method" in message:
                self.events.append(message)
                if message["method"] == event:
                    return message

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image decoded or failed by then)."""
        self.events.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> List[str]:
        """Console errors and warnings, uncaught exceptions, and error log entries so far."""
        out = []
        for message in self.events:
            method, params = message["method"], message.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error", "assert", "warning"):
                out.append(f"console.{params['type']}: "
                           + " ".join(str(a.get("value", a.get("description")))
                                      for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                out.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
            elif method == "Network.loadingFailed":
                out.append(f"loading failed: {params.get('errorText')}")
        return out

    def requested_urls(self) -> List[str]:
        return [m["params"]["request"]["url"] for m in self.events
                if m["method"] == "Network.requestWillBeSent"]

    def screenshot(self, width: int = 1000) -> bytes:
        """The whole page as PNG, `width` CSS pixels wide."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=800,
                  deviceScaleFactor=1, mobile=False)
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            try:
                socket.close()
            except Exception:
                pass
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
