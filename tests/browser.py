"""A headless Chromium driven over the DevTools protocol: load a page, wait for it, read its DOM, screenshot it.

Uses Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it) and aiohttp's
websocket client (a dependency of MLflow): nothing is downloaded at run time. Chromium listens
on 127.0.0.1 only, with a throw-away profile.

    python -m tests.browser URL OUT.png [--wait-text REGEX]   # a screenshot, e.g. for docs/compare_view.png
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Whether MLflow's assistant panel is open (MLflow 3.17): its flag in localStorage, or its header "MLflow Assistant"
# inside the window (the closed panel's round button hides the same words past the window's right edge). On a server
# on localhost it opens by itself on a first visit unless the page says otherwise (`ablate ui` does: ui_app.py).
ASSISTANT_OPEN = """(window.localStorage.getItem('mlflow.assistant.panelOpen_v1') === 'true'
  || Array.from(document.querySelectorAll('body *'))
       .filter(e => e.children.length === 0 && e.textContent.trim() === 'MLflow Assistant')
       .some(e => { const r = e.getBoundingClientRect();
                    return r.width > 0 && r.left >= 0 && r.right <= window.innerWidth; }))"""


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One page of a headless Chromium; use as a context manager (the browser and its profile go on exit)."""

    def __init__(self, width: int = 1600, height: int = 1000) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no chromium on PATH: apt-get install chromium")
        self.profile = tempfile.mkdtemp(prefix="ablate-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint within 30 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        deadline = time.time() + 10
        while True:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.time() > deadline:
                break
            time.sleep(0.1)
        if not pages:
            self.close()
            raise RuntimeError("chromium has no page target")
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self.loop = asyncio.new_event_loop()
        self.session: Any = None
        self.ws: Any = None
        self.next_id = 0
        self.loop.run_until_complete(self._connect())

    async def _connect(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.ws_url, max_msg_size=0)

    async def _call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One DevTools command; returns its result."""
        return self.loop.run_until_complete(self._call(method, params))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str, local_storage: dict[str, str] | None = None) -> None:
        """Navigate to ``url``; ``local_storage`` items are set on its origin first (then the page loads afresh)."""
        if local_storage:
            origin = url.split("#", 1)[0].rstrip("/") + "/"
            self.call("Page.navigate", {"url": origin})
            self.wait_for("document.readyState === 'complete'", 30)
            for key, value in local_storage.items():
                self.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)})")
        self.call("Page.navigate", {"url": url})

    def wait_for(self, predicate: str, timeout_s: float = 60) -> None:
        """Poll a JavaScript predicate until it is true; RuntimeError with the page's text when it never is."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                if self.evaluate(predicate):
                    return
            except RuntimeError:
                pass  # the page is between documents
            time.sleep(0.25)
        raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {predicate!r}; the page shows:\n"
                           + str(self.evaluate("document.body ? document.body.innerText : ''"))[:3000])

    def text(self) -> str:
        """The page's visible text."""
        return str(self.evaluate("document.body.innerText"))

    def screenshot(self, path: str | Path) -> Path:
        """A PNG of the viewport."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        out = Path(path)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        """Close the browser and delete its profile."""
        if getattr(self, "ws", None) is not None:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
            self.ws = None
        if getattr(self, "loop", None) is not None and not self.loop.is_closed():
            self.loop.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Screenshot of a page in headless Chromium (e.g. the MLflow UI).")
    parser.add_argument("url", help="the page (an `ablate ui` link)")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--wait-text", default="",
                        help="wait until the page's text matches this regular expression (default: wait 15 s)")
    parser.add_argument("--width", type=int, default=1600, help="window width in pixels")
    parser.add_argument("--height", type=int, default=1000, help="window height in pixels")
    args = parser.parse_args()
    with Page(args.width, args.height) as page:
        page.open(args.url)  # a fresh profile, no presets: what a first-time visitor sees
        if args.wait_text:
            page.wait_for(f"document.body && new RegExp({json.dumps(args.wait_text)}).test(document.body.innerText)", 90)
        time.sleep(3 if args.wait_text else 15)  # charts draw after the data arrives
        page.screenshot(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
