"""A small headless-Chromium harness for the report tests: the DevTools protocol over a pipe.

Chromium started with ``--remote-debugging-pipe`` reads DevTools (CDP) commands from its file descriptor 3
and writes replies and events to descriptor 4, each message JSON ended by a NUL byte. That needs no port,
no websocket client and no package beyond the standard library, so it behaves the same on a laptop and
on a fresh CI machine (Linux only: the descriptors are set up with ``dup2`` in the child).

    with Browser() as browser:
        page = browser.open(Path("report.html"))
        page.evaluate("document.images.length")
        page.errors        # console errors, uncaught exceptions, failed loads, dialogs

Run as a script it takes a screenshot of a page (used for the README's figure)::

    python tests/browser.py screenshot demo-output/report.html benchmarks/figures/report.png
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--no-first-run", "--no-default-browser-check", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)
TIMEOUT_S = 60.0


class BrowserError(RuntimeError):
    """Chromium did not start, answered with an error, or did not answer in time."""


def find_chromium() -> Optional[str]:
    """The browser executable: $WBIA_LIGHTGLUE_CHROMIUM, else the first of CANDIDATES on the PATH."""
    explicit = os.environ.get("WBIA_LIGHTGLUE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium process with a DevTools connection over a pipe (a context manager)."""

    def __init__(self, executable: Optional[str] = None, timeout: float = TIMEOUT_S):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("no Chromium found (install Debian's chromium package)")
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self._events: List[Dict[str, Any]] = []

    def __enter__(self) -> "Browser":
        self._profile = tempfile.TemporaryDirectory(prefix="wbia-lightglue-chromium-")
        to_child_r, self._to_child = _high_pipe()
        self._from_child, from_child_w = _high_pipe()

        def wire_descriptors() -> None:  # in the child, before exec: CDP expects exactly fds 3 and 4
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            pass_fds=(3, 4), preexec_fn=wire_descriptors)
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            self.call("Target.getTargets")  # the connection answers: the browser is up
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self._send({"id": self._new_id(), "method": "Browser.close"})
                    self.process.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            self._profile.cleanup()

    # ------------------------------------------------------------------------------- protocol
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: Dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]

    def _receive(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the DevTools pipe: {self.stderr_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> Any:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        message: Dict[str, Any] = {"id": self._new_id(), "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_for(self, method: str, session: Optional[str] = None) -> Dict[str, Any]:
        """The first (kept or new) event named ``method`` of ``session``; it is consumed."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            self._events.append(self._receive(deadline))

    def events(self, session: Optional[str] = None) -> List[Dict[str, Any]]:
        return [e for e in self._events if e.get("sessionId") == session]

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def open(self, path: Path, width: int = 1200, height: int = 900) -> "Page":
        """A new tab showing the local file ``path``, once its load event has fired."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        page.call("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_for("Page.loadEventFired", session)
        return page


class Page:
    """One tab: evaluate JavaScript, read what went wrong, take a screenshot."""

    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises awaited); BrowserError when it throws."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    @property
    def errors(self) -> List[str]:
        """Console errors, uncaught exceptions, failed loads (Log entries of level error) and dialogs."""
        out = []
        for event in self.browser.events(self.session):
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + str(params.get("exceptionDetails", {}).get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Page.javascriptDialogOpening":
                out.append(f"dialog: {params.get('type')} {params.get('message')}")
        return out

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return Path(path)


def _high_pipe() -> tuple:
    """A pipe whose two ends sit above fd 9, so wiring fds 3 and 4 in the child cannot clobber them."""
    import fcntl

    read, write = os.pipe()
    high = (fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(write, fcntl.F_DUPFD_CLOEXEC, 10))
    os.close(read)
    os.close(write)
    return high


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shot = commands.add_parser("screenshot", help="PNG of the top of a local HTML page")
    shot.add_argument("page", type=Path)
    shot.add_argument("output", type=Path)
    shot.add_argument("--width", type=int, default=1100)
    shot.add_argument("--height", type=int, default=900)
    shot.add_argument("--colors", type=int, default=128, help="quantise to this many colours (0: keep)")
    args = parser.parse_args(argv)
    with Browser() as browser:
        page = browser.open(args.page, args.width, args.height)
        page.screenshot(args.output)
        problems = page.errors
    if args.colors:  # a palette PNG is a fraction of the size: README figures stay small
        from PIL import Image

        Image.open(args.output).convert("RGB").quantize(args.colors, dither=Image.Dither.NONE).save(
            args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KB)"
          + (f"; page problems: {problems}" if problems else ""))


if __name__ == "__main__":
    main()
