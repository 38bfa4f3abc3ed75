"""A real headless browser for the activity page's tests: Debian's chromium, driven over DevTools.

`Browser` starts chromium headless with `--remote-debugging-pipe` and speaks the DevTools
protocol on that pipe (no websocket library, no driver): open a page, read its DOM, click a link
with the mouse, type into a field and press Enter, take a screenshot; with JavaScript on or off.
Each `Browser` is a fresh chromium with its own profile directory, run with `--no-sandbox` (the
suite runs as root). `pixel(png, x, y)` reads one pixel of a screenshot, so a test can tell that
the stylesheet was applied.
"""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

TIMEOUT = 30


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    raise AssertionError("chromium is missing: install the Debian package chromium (scripts/test.sh does)")


def pixel(png: Path, x: int, y: int) -> tuple[int, int, int]:
    """The (r, g, b) of one pixel of an 8-bit RGB or RGBA, non-interlaced PNG (what chromium writes)."""
    data = Path(png).read_bytes()
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    channels = 3 if color == 2 else 4
    stride = width * channels
    raw = zlib.decompress(b"".join(chunks))
    previous = bytearray(stride)
    for row in range(y + 1):  # rows are filtered against the one above: undo them down to row y
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        previous = line
    return tuple(previous[x * channels:x * channels + 3])


# --- the DevTools protocol over a pipe: real clicks and typing, scripts off ---------------------

class Browser:
    """A headless chromium driven through the DevTools protocol over `--remote-debugging-pipe`
    (JSON messages, NUL-terminated, on file descriptors 3 and 4: no websocket, no extra package).

    Pages are opened with `javascript=False` by DevTools' `Emulation.setScriptExecutionDisabled`,
    which leaves the DevTools commands working (`--blink-settings=scriptEnabled=false` would
    stop `--dump-dom` too). Basic auth goes as an `Authorization` header on every request.

        with Browser(javascript=False, auth=("user", "password")) as b:
            b.open(url); b.type_into("#q", "v1.2.0", submit=True); html = b.html()
    """

    def __init__(self, *, javascript: bool = True, auth: tuple[str, str] | None = None,
                 width: int = 1280, height: int = 1800):
        self.javascript, self.auth, self.width, self.height = javascript, auth, width, height
        self._next = 0
        self._buffer = b""
        self.events: list[dict] = []

    def __enter__(self) -> "Browser":
        import fcntl
        import os

        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Out of the way of 3 and 4 first, so the child's dup2 cannot clobber one with the other.
        high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)

        def wire() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._profile = tempfile.TemporaryDirectory(prefix="tagsweeper-chromium-")
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
             "--disable-background-networking", "--disable-sync", "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", f"--window-size={self.width},{self.height}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(high_r)
        os.close(high_w)
        target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        for method in ("Page.enable", "Network.enable", "DOM.enable"):
            self.call(method, session=True)
        if not self.javascript:
            self.call("Emulation.setScriptExecutionDisabled", session=True, value=True)
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            self.call("Network.setExtraHTTPHeaders", session=True, headers={"Authorization": f"Basic {token}"})
        return self

    def __exit__(self, *exc) -> None:
        import os

        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        self._profile.cleanup()

    # -- the protocol ------------------------------------------------------------------------
    def call(self, method: str, *, session: bool = False, **params) -> dict:
        import json
        import os

        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, timeout: float = TIMEOUT) -> dict:
        import json
        import os
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], timeout)
            assert ready, "chromium did not answer"
            chunk = os.read(self._from_chrome, 1 << 16)
            assert chunk, "chromium closed the DevTools pipe"
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def _wait_for(self, method: str) -> dict:
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    del self.events[: i + 1]
                    return event
            self.events.append(self._read())

    # -- what a person does --------------------------------------------------------------------
    def open(self, url: str) -> "Browser":
        self.events.clear()
        result = self.call("Page.navigate", session=True, url=url)
        assert not result.get("errorText"), result
        self._wait_for("Page.loadEventFired")
        return self

    def html(self) -> str:
        root = self.call("DOM.getDocument", session=True, depth=-1)["root"]
        return self.call("DOM.getOuterHTML", session=True, nodeId=root["nodeId"])["outerHTML"]

    def url(self) -> str:
        return self.call("Target.getTargetInfo", session=True)["targetInfo"]["url"]

    def _node(self, selector: str) -> int:
        root = self.call("DOM.getDocument", session=True, depth=0)["root"]
        node = self.call("DOM.querySelector", session=True, nodeId=root["nodeId"], selector=selector)["nodeId"]
        assert node, f"nothing on the page matches {selector!r}"
        return node

    def click(self, selector: str) -> "Browser":
        """Click the first element matching `selector` with the mouse, and wait for the page it opens."""
        node = self._node(selector)
        self.call("DOM.scrollIntoViewIfNeeded", session=True, nodeId=node)
        quad = self.call("DOM.getContentQuads", session=True, nodeId=node)["quads"][0]
        x, y = sum(quad[0::2]) / 4, sum(quad[1::2]) / 4
        self.events.clear()
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)
        self._wait_for("Page.loadEventFired")
        return self

    def type_into(self, selector: str, text: str, *, submit: bool = False) -> "Browser":
        """Focus the field, type `text`, and with `submit` press Enter and wait for the page it opens."""
        self.call("DOM.focus", session=True, nodeId=self._node(selector))
        self.call("Input.insertText", session=True, text=text)
        if submit:
            self.events.clear()
            # keyDown with its text is a typed Enter: the form's implicit submission, no script involved.
            self.call("Input.dispatchKeyEvent", session=True, type="keyDown", key="Enter", code="Enter",
                      windowsVirtualKeyCode=13, nativeVirtualKeyCode=13, text="\r", unmodifiedText="\r")
            self.call("Input.dispatchKeyEvent", session=True, type="keyUp", key="Enter", code="Enter",
                      windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)
            self._wait_for("Page.loadEventFired")
        return self

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """A PNG of the page: all of it (`full_page`), or what the window shows."""
        params = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": size["height"], "scale": 1})
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
