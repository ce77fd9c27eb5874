"""Headless Chromium driven over the DevTools protocol (one browser, many pages): what a page
requested, what it logged as an error, whether its images loaded, and a screenshot.

The browser resolves no name at all (--host-resolver-rules), so even a page that tried to fetch
something from the internet could not: the test sees the attempt in the requests it records."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

_IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
              "i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]))")
_LINKS_JS = ("JSON.stringify(Array.from(document.querySelectorAll('[src],[href],[action],[srcset]'))"
             ".map(e => e.getAttribute('src') || e.getAttribute('href') || e.getAttribute('action') || e.getAttribute('srcset')))")


@dataclass
class PageVisit:
    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: list[tuple[str, bool, int, int, float]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    text: str = ""


class Browser:
    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._session: str | None = None
        self._events: list[dict[str, Any]] = []

    def _send(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
              timeout: float = 30.0) -> dict[str, Any]:
        i = next(self._ids)
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self._ws.recv())
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)
        raise TimeoutError(method)

    def _wait_event(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == name for e in self._events):
                return
            self._events.append(json.loads(self._ws.recv()))
        raise TimeoutError(name)

    def open_tab(self) -> None:
        target = self._send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._send(f"{domain}.enable")
        self._send("Emulation.setDeviceMetricsOverride", {"width": 1300, "height": 900, "deviceScaleFactor": 1,
                                                          "mobile": False})

    def _eval(self, js: str) -> Any:
        return self._send("Runtime.evaluate", {"expression": js, "returnByValue": True})["result"].get("value")

    def visit(self, path: Path, screenshot: Path | None = None) -> PageVisit:
        url = path.resolve().as_uri()
        self._events = []
        self._send("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")
        visit = PageVisit(url)
        visit.images = [tuple(x) for x in json.loads(self._eval(_IMAGES_JS))]  # type: ignore[misc]
        visit.links = json.loads(self._eval(_LINKS_JS))
        visit.text = self._eval("document.body.innerText") or ""
        if screenshot is not None:
            shot = self._send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        for e in self._events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Network.requestWillBeSent":
                visit.requests.append(p["request"]["url"])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                visit.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                visit.errors.append("exception: " + str(p.get("exceptionDetails", {}).get("text")))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                visit.errors.append("log: " + str(p["entry"].get("text")) + " " + str(p["entry"].get("url", "")))
            elif m == "Network.loadingFailed":
                visit.errors.append("failed load: " + str(p.get("errorText")))
        return visit


@contextmanager
def chromium(profile: Path) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile and no name resolution; its DevTools socket."""
    import websocket  # the test extra's websocket-client

    assert CHROMIUM is not None
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    drain: threading.Thread | None = None
    try:
        assert proc.stderr is not None
        ws_url = None
        deadline = time.monotonic() + 60
        while ws_url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                ws_url = m.group(1)
        if ws_url is None:
            raise RuntimeError("chromium did not open its DevTools socket")
        # keep reading its log, or a full pipe would stall the browser
        drain = threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True)
        drain.start()
        ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        try:
            browser = Browser(ws)
            browser.open_tab()
            yield browser
        finally:
            ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drain is not None:
            drain.join(timeout=10)  # the browser is gone: its log ends
        if proc.stderr is not None:
            proc.stderr.close()
