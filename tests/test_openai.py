"""POST /v1/audio/transcriptions, driven by the official `openai` SDK against a real server on
loopback: every response format, streaming, and the errors in OpenAI's shape."""

from __future__ import annotations

import contextlib
import io
import wave

import httpx
import openai
import pytest
import srt
import webvtt

from tests.conftest import start_server
from tests.snippets import run_snippet
from tests.streaming import word_error_rate

CLIP = "en_librispeech_1221-135766-0001.wav"  # 16.7 s read speech: several finals
KEY = "openai-test-key"


@pytest.fixture(scope="module")
def keyed(engine, vad):
    with start_server(engine, vad, api_keys=(KEY,)) as running:
        yield running


@pytest.fixture(scope="module")
def client(keyed) -> openai.OpenAI:
    # No retries: a 503 here is a defect to see, not to wait out.
    return openai.OpenAI(base_url=f"{keyed.http}/v1", api_key=KEY, max_retries=0)


def test_the_snippet_in_the_docs_works(keyed, clips) -> None:
    replacements = {"http://127.0.0.1:8000": keyed.http, '"my-key"': repr(KEY), '"audio.wav"': repr(str(clips[CLIP].path))}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_snippet("The OpenAI SDK (file transcription)", replacements)
    assert word_error_rate(clips[CLIP].reference, printed.getvalue()) <= 0.15, printed.getvalue()


def test_json_is_the_clip_s_words_and_its_duration(client, clips) -> None:
    clip = clips[CLIP]
    with clip.path.open("rb") as file:
        result = client.audio.transcriptions.create(model="whisper-1", file=file)
    assert word_error_rate(clip.reference, result.text) <= 0.15, result.text
    assert result.usage.seconds == round(clip.duration_s)


def test_verbose_json_has_segments_and_words_inside_the_clip(client, clips) -> None:
    clip = clips[CLIP]
    with clip.path.open("rb") as file:
        result = client.audio.transcriptions.create(
            model="tiny.en", file=file, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert result.language == "en" and result.duration == pytest.approx(clip.duration_s, abs=0.01)
    assert word_error_rate(clip.reference, " ".join(w.word for w in result.words)) <= 0.15, result.words
    assert " ".join(s.text.strip() for s in result.segments) == result.text
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and 0 <= starts[0] < 1.0 and result.words[-1].end <= clip.duration_s + 0.1
    assert all(s.start < s.end for s in result.segments), result.segments
    assert [s.id for s in result.segments] == list(range(len(result.segments)))


def test_text_srt_and_vtt(client, clips) -> None:
    clip = clips["en_jfk_padded_3s_5s_silence.wav"]  # speech from 3 s to 14 s
    formats = {}
    for kind in ("text", "srt", "vtt"):
        with clip.path.open("rb") as file:
            formats[kind] = client.audio.transcriptions.create(model="whisper-1", file=file, response_format=kind)
    assert word_error_rate(clip.reference, formats["text"]) <= 0.25, formats["text"]
    subtitles = list(srt.parse(formats["srt"]))
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1)) and subtitles
    assert subtitles[0].start.total_seconds() >= 2.9 and subtitles[-1].end.total_seconds() <= 14.2, formats["srt"]
    assert " ".join(s.content for s in subtitles) == formats["text"].strip()
    captions = webvtt.from_string(formats["vtt"]).captions
    assert [c.text for c in captions] == [s.content for s in subtitles]


def test_stream_sends_a_delta_per_final_then_the_whole_text(client, clips) -> None:
    clip = clips["en_jfk_padded_3s_5s_silence.wav"]  # four phrases, finals of their own
    with clip.path.open("rb") as file:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=file, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}, kinds
    assert len(kinds) >= 3  # more than one final
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    # As in test_subtitles: one JFK phrase heard alone may be misheard by tiny.en.
    assert word_error_rate(clip.reference, events[-1].text) <= 0.25, events[-1].text


def test_openai_s_transcription_model_names_stand_for_the_served_model(client, clips) -> None:
    clip = clips["en_timit_LDC93S1.wav"]
    for name in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tiny.en"):
        with clip.path.open("rb") as file:
            text = client.audio.transcriptions.create(model=name, file=file).text
        assert word_error_rate(clip.reference, text) <= 0.2, (name, text)


def test_bad_requests_are_errors_in_openai_s_shape(client, keyed, clips) -> None:
    clip = clips["en_timit_LDC93S1.wav"]
    with clip.path.open("rb") as file, pytest.raises(openai.NotFoundError) as unknown_model:
        client.audio.transcriptions.create(model="large-v3", file=file)
    assert unknown_model.value.code == "model_not_found" and "tiny.en" in unknown_model.value.message
    with clip.path.open("rb") as file, pytest.raises(openai.BadRequestError) as bad_format:
        client.audio.transcriptions.create(model="whisper-1", file=file, response_format="xml")  # type: ignore[arg-type]
    assert bad_format.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as not_audio:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"these are not audio bytes"))
    assert (not_audio.value.param, not_audio.value.code) == ("file", "invalid_audio")
    with clip.path.open("rb") as file, pytest.raises(openai.BadRequestError) as french:
        client.audio.transcriptions.create(model="whisper-1", file=file, language="fr")  # tiny.en is English only
    assert french.value.param == "language" and "fr" in french.value.message
    wrong_key = openai.OpenAI(base_url=f"{keyed.http}/v1", api_key="not-the-key", max_retries=0)
    with clip.path.open("rb") as file, pytest.raises(openai.AuthenticationError) as refused:
        wrong_key.audio.transcriptions.create(model="whisper-1", file=file)
    assert refused.value.code == "invalid_api_key"
    # And the server goes on serving.
    with clip.path.open("rb") as file:
        assert word_error_rate(clip.reference, client.audio.transcriptions.create(model="whisper-1", file=file).text) <= 0.25


def test_silence_gives_empty_text(client) -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16_000)
        out.writeframes(bytes(2 * 16_000 * 3))
    result = client.audio.transcriptions.create(model="whisper-1", file=("silence.wav", buffer.getvalue()))
    assert result.text == ""


def test_a_form_without_a_file_names_the_missing_field(keyed) -> None:
    response = httpx.post(
        f"{keyed.http}/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"other": ("x", b"")},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file" and response.json()["error"]["type"] == "invalid_request_error"
