"""The browser client (worldsim/serve/web/index.html) driven in headless Chromium through the WebSocket gateway:
it connects, shows frames on the canvas, and the keys, mouse and prompt typed into the page reach the model (the
daemon echoes the control row each frame was made with, `open.echo_controls`)."""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest

from serve_helpers import tiny_backend

# Chromium as root in a closed network: no sandbox, and none of its background connections to Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("WORLDSIM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
        why = "playwright is not installed (pip install -e '.[test]')"
    else:
        why = "Chromium is not installed (apt-get install chromium, or set WORLDSIM_CHROMIUM)"
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture
def page(make_daemon, make_gateway):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    daemon = make_daemon(tiny_backend(size=64))
    gateway = make_gateway(daemon)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(gateway.page_url + "?prompt=a%20quiet%20forest&seed=3")
            yield page
            assert errors == [], errors
        finally:
            browser.close()


def echoed(page, expression: str, timeout_s: float = 20.0):
    """Wait until ``expression`` over the echoed control row of the shown frame (``c``) holds."""
    page.wait_for_function(f"(() => {{ const h = worldsim.lastHeader, c = h && h.control; return !!c && ({expression}); }})()",
                           timeout=timeout_s * 1000)


def test_page_streams_and_sends_keys_mouse_and_prompts(page, tmp_path):
    page.wait_for_function("worldsim.framesShown >= 8", timeout=30_000)
    keys = page.evaluate("worldsim.welcome.control.keys")
    w, d = keys.index("W"), keys.index("D")
    echoed(page, "c.keys.every((k) => k === 0)")  # nothing held yet

    page.keyboard.down("w")
    page.keyboard.down("d")
    echoed(page, f"c.keys[{w}] === 1 && c.keys[{d}] === 1 && c.keys.filter((k) => k).length === 2")
    assert "model saw W D" in page.inner_text("#hud")
    page.keyboard.up("w")
    page.keyboard.up("d")
    echoed(page, "c.keys.every((k) => k === 0)")

    page.click("canvas")  # pointer lock: mouse motion becomes the schema's axes, with its sign
    assert page.evaluate("document.pointerLockElement === document.getElementById('screen')")
    for direction in (1, -1):
        page.mouse.move(450, 300)
        for step in range(1, 80):
            page.mouse.move(450 + direction * 5 * step, 300)  # 5 px per step, ~15 px per control row
            time.sleep(0.02)
            if page.evaluate(f"worldsim.lastHeader.control.axes[0] * {direction} > 0"):
                break
        else:
            pytest.fail(f"mouse motion {direction:+d} never reached the model: {page.evaluate('worldsim.lastHeader')}")

    page.fill("#prompt", "a desert at noon")
    page.press("#prompt", "Enter")
    page.wait_for_function("worldsim.lastHeader.prompt_seq > 0", timeout=20_000)

    hud = page.inner_text("#hud")
    assert "FPS" in hud and "control-to-photon" in hud and " ms" in hud, hud

    from PIL import Image

    shot = page.locator("canvas").screenshot(path=str(tmp_path / "canvas.png"))
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 20, "the canvas is blank"
