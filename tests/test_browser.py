"""The browser page at `/`, in a real headless Chromium whose fake microphone plays a shared
clip: AudioWorklet capture, 16 kHz s16le frames over the WebSocket, transcripts on the page.

Chromium comes from Debian (`.ci/run` installs it); without it these tests are skipped, saying
so. Playwright drives that Chromium; it never downloads a browser of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
import wave
from collections.abc import Iterator

import numpy as np
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, WebSocket, sync_playwright

from tests.conftest import RunningServer, read_wav, start_server
from tests.streaming import s16le, word_error_rate

CLIP = "en_librispeech_1089-134686-0001.wav"  # 6.6 s: long enough for partials
LEAD_S = 1.0  # silence before the clip in the fake microphone's file
API_KEY = "browser-key"


def chromium() -> str | None:
    return os.environ.get("WHISPERWIRE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def key_server(engine, vad) -> Iterator[RunningServer]:
    with start_server(engine, vad, api_keys=(API_KEY,)) as running:
        yield running


@pytest.fixture(scope="module")
def browser(clips, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    executable = chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
    # The fake microphone loops its file: speech between silences, so each pass has an end.
    folder = tmp_path_factory.mktemp("browser")
    audio = folder / "microphone.wav"
    speech = read_wav(clips[CLIP].path)
    with wave.open(str(audio), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(s16le(np.concatenate([np.zeros(int(LEAD_S * 16_000), np.float32), speech, np.zeros(3 * 16_000, np.float32)])))
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={audio}",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(folder / "profile"), executable_path=executable, headless=True, args=args, viewport={"width": 1280, "height": 800}
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext, key_server: RunningServer) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(key_server.http + "/")
    page.evaluate("localStorage.clear()")  # settings saved by an earlier test must not leak
    page.reload()
    yield page
    page.close()
    assert errors == [], errors


def test_the_page_and_its_files_are_served(key_server: RunningServer) -> None:
    with urllib.request.urlopen(key_server.http + "/") as response:
        assert response.headers["content-type"].startswith("text/html")
        html = response.read().decode()
    assert 'src="web/app.js"' in html and 'href="web/style.css"' in html
    for name, kind in [("app.js", "javascript"), ("capture-worklet.js", "javascript"), ("style.css", "text/css")]:
        with urllib.request.urlopen(f"{key_server.http}/web/{name}") as response:
            assert kind in response.headers["content-type"], name
            assert response.read()


def test_microphone_to_finals_on_the_page(page: Page, clips) -> None:
    clip = clips[CLIP]
    sockets: list[WebSocket] = []
    frames: list[str | bytes] = []

    def watch(socket: WebSocket) -> None:
        sockets.append(socket)
        socket.on("framesent", lambda payload: frames.append(payload))

    page.on("websocket", watch)
    page.fill("#api-key", API_KEY)
    page.check("#word-timestamps")
    page.fill("#min-silence", "500")
    page.click("#toggle")

    page.wait_for_selector("#partial:not([hidden])", timeout=60_000)  # the one being spoken
    partial = page.locator("#partial")
    assert partial.evaluate("p => getComputedStyle(p).fontStyle") == "italic"
    assert partial.evaluate("p => getComputedStyle(p).color") != page.evaluate("getComputedStyle(document.body).color")
    final = final_with_words(page, clip.reference)
    # The final replaced its partials; a partial still shown is of the next utterance.
    assert partial.is_hidden() or int(partial.get_attribute("data-num") or 0) > int(final.get_attribute("data-num") or 0)

    text = final.locator(".text").inner_text()
    start, end = re.fullmatch(r"0:(\d\d\.\d\d) – 0:(\d\d\.\d\d)", final.locator(".time").inner_text()).groups()  # type: ignore[union-attr]
    assert 0.7 * clip.duration_s <= float(end) - float(start) <= clip.duration_s + 0.1, (start, end)
    assert re.fullmatch(r"en · conf 0\.\d\d", final.locator(".tags").inner_text())
    assert page.inner_text("#language") == "en"
    assert re.fullmatch(r"0\.\d\d", page.inner_text("#confidence"))
    words = final.locator(".word")
    assert words.count() == len(text.split())
    assert re.fullmatch(r"\d+\.\d\d–\d+\.\d\d s · p [01]\.\d\d", words.first.get_attribute("title") or "")

    page.click("#toggle")  # stop: the last frame, then terminate; the server closes with 1000
    page.wait_for_selector("#status[data-state=finished]", timeout=60_000)
    assert page.is_hidden("#error")

    [socket] = sockets
    assert socket.url == f"{page.url.replace('http', 'ws')}v1/websocket?api_key={API_KEY}"
    assert json.loads(frames[0]) == {
        "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 500, "speech_pad_ms": 30},
        "streaming_params": {
            "encoding": "pcm_s16le",
            "sample_rate": 16000,
            "enable_partial_transcripts": True,
            "partial_transcript_interval_s": 0.5,
        },
        "whisper_params": {"audio_language": "en", "show_word_timestamps": True},
    }
    audio = [frame for frame in frames[1:-1] if isinstance(frame, bytes)]
    assert len(audio) == len(frames) - 2 and audio
    assert {len(frame) for frame in audio[:-1]} == {640}  # 20 ms of 16 kHz s16le each
    assert json.loads(frames[-1]) == {"type": "terminate"}


def final_with_words(page: Page, reference: str, timeout: float = 60.0) -> Locator:
    """The first final on the page that holds the clip's words.

    The fake microphone may start its file before the page listens, so the first final can
    be the end of a pass; the next pass comes whole.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals = page.locator(".final")
        for index in range(finals.count()):
            if word_error_rate(reference, finals.nth(index).locator(".text").inner_text()) <= 0.15:
                return finals.nth(index)
        page.wait_for_timeout(250)
    raise AssertionError(f"no final with the clip's words; the page shows {page.inner_text('#finals')!r}")


def test_a_wrong_api_key_is_explained(page: Page) -> None:
    page.fill("#api-key", "wrong")
    page.click("#toggle")
    page.wait_for_selector("#status[data-state=error]", timeout=30_000)
    assert "API key" in page.inner_text("#error")
    assert page.inner_text("#toggle") == "Start microphone"


def test_a_server_error_is_shown_with_its_field(page: Page) -> None:
    page.fill("#api-key", API_KEY)
    page.fill("#audio-language", "xx")
    page.click("#toggle")
    page.wait_for_selector("#status[data-state=error]", timeout=30_000)
    assert page.inner_text("#status") == "Closed (1007)"
    error = page.inner_text("#error")
    assert error.startswith("invalid_metadata:") and "(whisper_params.audio_language)" in error
