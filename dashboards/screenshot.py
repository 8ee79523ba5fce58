"""Screenshots of the running dashboard with headless Chromium (Debian's ``chromium``), for tests
and for people: ``python -m dashboards.screenshot http://127.0.0.1:8501 var/screenshots``.

Chromium's own ``--screenshot`` with ``--virtual-time-budget`` fires too early for Streamlit: the
page is drawn from websocket messages, which virtual time does not wait for, so it captures an
empty "running…" shell. Instead this drives Chromium over the DevTools protocol: load the page,
wait until Streamlit has finished the script run and every Plotly chart has drawn, then capture.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
PAGES = ("overview", "geography", "risk", "trends", "models", "alerts")
# The default page lives at the app's root, not under its own url_path.
PATHS = {"overview": ""}
WIDTH, HEIGHT = 1400, 1000
MAX_HEIGHT = 6000  # full-page captures grow the viewport to the page's height, up to this
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)  # fmt: skip

# "ready" once the app is mounted, not running, the page body has finished (its "Updated …"
# caption is there), nothing is stale and every Plotly chart (maps included) has drawn its SVG;
# otherwise a word saying what it still waits for.
_READY_JS = r"""
(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return 'no app';
  const status = document.querySelector('[data-testid="stStatusWidget"]');
  if (status && /running|stop/i.test(status.innerText)) return 'running';
  if (document.querySelector('[data-testid="stSkeleton"]')) return 'skeleton';
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main || !main.innerText.trim()) return 'empty';
  // common.live() writes this caption after a page's body: its absence means still running.
  if (!/Updated \d\d:\d\d:\d\d UTC/.test(main.innerText)) return 'body';
  if ([...document.querySelectorAll('[data-stale="true"]')].length) return 'stale';
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  if (plots.some(p => !p.querySelector('.main-svg'))) return 'plotting';
  if ([...document.querySelectorAll('.js-plotly-plot .geo')].some(g => !g.querySelector('path')))
    return 'map';
  return 'ready:' + main.innerText.length + ':' + plots.length;
})()
"""


_HEIGHT_JS = """
(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  return main ? main.scrollHeight + 40 : document.documentElement.scrollHeight;
})()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Page:
    """A minimal DevTools-protocol session on one page target."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@contextlib.contextmanager
def browser(width: int = WIDTH, height: int = HEIGHT) -> Iterator[_Page]:
    """A fresh headless Chromium (own profile directory) and a DevTools session on its page."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="fraudray-chromium-")
    argv = [
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
        f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "about:blank",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not targets:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                listed = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=1).json()
                targets = [t for t in listed if t.get("type") == "page"]
            if not targets:
                time.sleep(0.2)
        if not targets:
            raise TimeoutError("Chromium's DevTools endpoint did not come up")
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            page = _Page(ws)
            _set_viewport(page, width, height)
            yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def _wait_ready(page: _Page, deadline: float, settle_s: float) -> str:
    state, since = "", time.monotonic()
    while time.monotonic() < deadline:
        current = str(page.evaluate(_READY_JS))
        if current != state:
            state, since = current, time.monotonic()
        elif state.startswith("ready") and time.monotonic() - since >= settle_s:
            break
        time.sleep(0.25)
    return state


def _set_viewport(page: _Page, width: int, height: int) -> None:
    page.call(
        "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
    )


def capture(
    page: _Page,
    url: str,
    out: Path,
    *,
    timeout_s: float = 60.0,
    settle_s: float = 1.5,
    full_page: bool = True,
) -> str:
    """Load ``url``, wait until the page is ready and unchanged for ``settle_s``, write a PNG
    (``full_page``: the viewport grown to the page's whole height first). Returns the last
    readiness state (``ready:…`` unless it timed out, then it captures anyway)."""
    _set_viewport(page, WIDTH, HEIGHT)
    page.call("Page.navigate", url=url)
    deadline = time.monotonic() + timeout_s
    state = _wait_ready(page, deadline, settle_s)
    if full_page and state.startswith("ready"):
        # Streamlit scrolls inside its main block, not the document: measure that.
        height = int(page.evaluate(_HEIGHT_JS) or HEIGHT)
        if height > HEIGHT:
            _set_viewport(page, WIDTH, min(height, MAX_HEIGHT))
            state = _wait_ready(page, deadline, settle_s / 2)
    shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return state


def capture_pages(
    base_url: str, out_dir: Path, query: str = "", pages: tuple[str, ...] = PAGES
) -> dict[str, str]:
    """A screenshot per page (``out_dir/<page>.png``); page → readiness state."""
    states = {}
    with browser() as page:
        for name in pages:
            suffix = f"?{query}" if query else ""
            path = PATHS.get(name, name)
            states[name] = capture(page, f"{base_url.rstrip('/')}/{path}{suffix}", out_dir / f"{name}.png")
    return states


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m dashboards.screenshot BASE_URL OUT_DIR [QUERY]")
    query_string = sys.argv[3] if len(sys.argv) > 3 else ""
    for page_name, ready in capture_pages(sys.argv[1], Path(sys.argv[2]), query_string).items():
        print(f"{page_name}: {ready}")
