"""Operations: metrics, readiness, logs that carry session ids and never keys, settings from
flags, environment and a config file, TLS. The `serve` command runs as a real process where the
behaviour lives in it (flags, logging, certificates)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import read_wav, start_server
from tests.streaming import converse, s16le, stream, until, word_error_rate
from tests.test_cli import free_port, whisperwire
from tests.test_faults import metric, scrape

SILENCE = np.zeros(16_000, dtype=np.float32)
DOCS = Path(__file__).resolve().parents[1] / "docs"


# --------------------------------------------------------------------------- metrics and readiness


async def test_metrics_count_what_the_server_did(engine, vad, clips) -> None:
    clip = clips["en_jfk_padded_3s_5s_silence.wav"]  # 19 s, four phrases
    audio = read_wav(clip.path)
    with start_server(engine, vad, api_keys=("k",), allowed_origins=("https://ok.example",)) as running:
        http, auth = running.http, {"Authorization": "Api-Key k"}
        connections = running.app.state.whisperwire.connections
        async with connect(running.url, additional_headers=auth) as ws:
            await ws.send("{}")
            # Registered before the handshake is accepted, so open once connect() returns.
            assert metric(http, "whisperwire_active_sessions") == 1
        received = await stream(running.url, {}, s16le(audio), headers=auth)
        await converse(running.url, ['{"bogus": 1}'], headers=auth)
        for headers in ({}, {"Authorization": "Api-Key nope"}, {**auth, "Origin": "https://evil.example"}):
            with pytest.raises(InvalidStatus):
                await converse(running.url, ["{}"], headers=headers)
        await until(lambda: not connections, "every session has ended on the server")
        values = scrape(http)

    def value(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    finals = len(received.finals)
    assert finals >= 3
    assert value("whisperwire_active_sessions") == 0
    assert value("whisperwire_audio_received_seconds_total") == pytest.approx(len(audio) / 16_000, abs=0.01)
    assert value("whisperwire_utterances_finalised_total") == finals
    assert value("whisperwire_final_latency_seconds_count") == finals
    # Latency is measured, not assumed: every final took some time, none an absurd one.
    assert 0 < value("whisperwire_final_latency_seconds_sum") < 60 * finals
    # Each final's time after it was asked for, in parts: every final has each part once.
    for stage in ("queue", "recognition", "encode", "send"):
        assert value("whisperwire_final_stage_seconds_count", stage=stage) == finals, stage
    # The encoder ran for every final (Whisper cannot decode without it), and took real time.
    assert value("whisperwire_final_stage_seconds_sum", stage="encode") > 0.001 * finals
    # The drafts' outcomes are exported, each (tests/test_scheduler.py counts them).
    for outcome in ("promoted", "withdrawn", "wasted"):
        assert ("whisperwire_drafts_total", (("outcome", outcome),)) in values, outcome
    assert value("whisperwire_drafts_total", outcome="wasted") <= value("whisperwire_inference_seconds_count", kind="draft")
    assert value("whisperwire_inference_seconds_count", kind="final") >= finals
    assert value("whisperwire_finals_batched_total") == 0  # --batch is 1 on a CPU
    # Exported, and 0: with no partials shown, no final's words were taken back.
    assert ("whisperwire_finals_recognised_again_total", ()) in values
    assert value("whisperwire_finals_recognised_again_total") == 0
    assert value("whisperwire_inference_seconds_count", kind="partial") == 0
    assert value("whisperwire_errors_total", code="invalid_metadata") == 1
    assert value("whisperwire_rejected_sessions_total", reason="unauthorized") == 2
    assert value("whisperwire_rejected_sessions_total", reason="origin") == 1
    assert value("whisperwire_queue_depth") == 0


def test_health_and_readiness(server) -> None:
    with urllib.request.urlopen(f"{server.http}/health", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(f"{server.http}/ready", timeout=5) as response:
        assert json.loads(response.read()) == {"ready": True, "reasons": []}
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b"whisperwire_active_sessions" in response.read()


# --------------------------------------------------------------------------- logs


def test_redactor_removes_keys_in_every_shape_uvicorn_prints() -> None:
    from whisperwire.logs import Redactor

    redact = Redactor(["configured-secret"])
    lines = {
        '127.0.0.1:5 - "WebSocket /v1/websocket?api_key=s3cr3t&x=1" [accepted]': "api_key=[redacted]&x=1",
        '"GET /ready?API_KEY=s3cr3t HTTP/1.1" 200': "API_KEY=[redacted] HTTP",
        "< authorization: Api-Key s3cr3t": "authorization: Api-Key [redacted]",
        "< Authorization: Bearer s3cr3t": "Authorization: Bearer [redacted]",
        "(b'authorization', b'Api-Key s3cr3t'), (b'host', b'x')": "(b'authorization', b'Api-Key [redacted]'), (b'host', b'x')",
        '{"message": "headers {\\"authorization\\": \\"s3cr3t\\"}"}': '\\"authorization\\": \\"[redacted]\\"',
        "key configured-secret seen in a traceback": "key [redacted] seen",
    }
    for line, kept in lines.items():
        cleaned = redact(line)
        assert "s3cr3t" not in cleaned and "configured-secret" not in cleaned, cleaned
        assert kept in cleaned, cleaned


def test_json_logs_carry_session_ids_and_never_a_key(tmp_path: Path, clips) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated monthly\nfile-key-3\n\n")
    port = free_port()
    env = {**os.environ, "WHISPERWIRE_API_KEY": "env-key-2"}
    command = whisperwire(
        "serve", "--port", str(port), "--api-key", "flag-key-1", "--api-key-file", str(keys_file),
        "--log-format", "json", "--log-level", "debug",
    )
    log = tmp_path / "serve.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads a pipe while the test runs
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, env=env)
    url = f"ws://127.0.0.1:{port}/v1/websocket"
    audio = s16le(np.concatenate([read_wav(clips["en_timit_LDC93S1.wav"].path), SILENCE]))
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)

        async def sessions() -> list[int]:
            finals = []
            for query, headers in [
                ("", {"Authorization": "Api-Key flag-key-1"}),
                ("?api_key=env-key-2", {}),
                ("", {"Authorization": "Bearer file-key-3"}),
            ]:
                finals.append(len((await stream(url + query, {}, audio, headers=headers)).finals))
            for query, headers in [("?api_key=wrong-key-4", {}), ("", {"Authorization": "Api-Key wrong-key-5"})]:
                with pytest.raises(InvalidStatus):
                    await converse(url + query, ["{}"], headers=headers)
            return finals

        # Keys from the flag, the variable and the file are all accepted.
        assert asyncio.run(sessions()) == [1, 1, 1]
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health?api_key=flag-key-1", timeout=5).close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    stderr = log.read_text()
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    text = "\n".join(json.dumps(line) for line in lines)
    for secret in ("flag-key-1", "env-key-2", "file-key-3", "wrong-key-4", "wrong-key-5"):
        assert secret not in stderr, secret
    assert "api_key=[redacted]" in text and "Api-Key [redacted]" in text
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    sessions_seen = {line["session_id"] for line in lines if line["logger"] == "whisperwire.server"}
    assert len(sessions_seen) == 3 and all(len(s) == 12 for s in sessions_seen)
    access = [line["message"] for line in lines if line["logger"] == "uvicorn.access"]
    assert any("/health?api_key=[redacted]" in message for message in access)


def wait_ready(http: str, process: subprocess.Popen, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited early"
        try:
            with urllib.request.urlopen(f"{http}/ready", timeout=1, context=context):
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError("serve did not become ready")


# --------------------------------------------------------------------------- settings


def test_flags_beat_the_environment_which_beats_the_file_and_keys_add_up(tmp_path: Path) -> None:
    from whisperwire.settings import load_settings

    config = tmp_path / "whisperwire.toml"
    config.write_text('port = 9000\nidle_timeout = 5\nmetadata_timeout = 3\napi_keys = ["file-key"]\nallowed_origins = ["https://a.example"]\n')
    environ = {"WHISPERWIRE_CONFIG": str(config), "WHISPERWIRE_IDLE_TIMEOUT": "7", "WHISPERWIRE_METADATA_TIMEOUT": "4",
               "WHISPERWIRE_API_KEY": "env-1, env-2", "WHISPERWIRE_ACCESS_LOG": "false"}
    settings = load_settings({"metadata_timeout": "2", "api_keys": ["flag-key"]}, environ)
    assert settings.port == 9000  # only the file sets it
    assert settings.idle_timeout == 7  # the environment beats the file
    assert settings.metadata_timeout == 2  # the flag beats both
    assert settings.access_log is False
    assert settings.allowed_origins == ("https://a.example",)
    assert settings.api_keys == ("file-key", "env-1", "env-2", "flag-key")
    assert settings.limits.idle_timeout_s == 7 and settings.limits.metadata_timeout_s == 2


@pytest.mark.parametrize(
    ("flags", "environ", "config", "message"),
    [
        ({"port": "eighty"}, {}, None, "port (--port): input should be a valid integer"),
        ({}, {"WHISPERWIRE_IDLE_TIMEOUT": "-1"}, None, "idle_timeout ($WHISPERWIRE_IDLE_TIMEOUT): input should be greater than 0"),
        ({}, {}, "prot = 1\n", "unknown setting 'prot' in config file"),
        ({}, {}, "port = [\n", "is not valid TOML"),
        ({}, {}, 'log_format = "xml"\n', "log_format (config file"),
        ({"ssl_keyfile": "/nonexistent.pem"}, {}, None, "ssl_keyfile needs ssl_certfile"),
        ({"api_key_file": "/nonexistent/keys"}, {}, None, "/nonexistent/keys is not a readable file"),
    ],
)
def test_a_bad_setting_is_named_with_where_it_came_from(tmp_path: Path, flags, environ, config, message) -> None:
    from whisperwire.settings import SettingsError, load_settings

    if config is not None:
        path = tmp_path / "bad.toml"
        path.write_text(config)
        flags = {**flags, "config": str(path)}
    with pytest.raises(SettingsError) as error:
        load_settings(flags, environ)
    assert message in str(error.value)


def test_serve_refuses_a_bad_config_before_loading_anything(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("drain_timout = 3\n")
    done = subprocess.run(whisperwire("serve", "--config", str(config)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown setting 'drain_timout'" in done.stderr


def test_the_settings_table_in_the_docs_is_the_one_the_code_makes() -> None:
    from whisperwire.settings import settings_table

    assert settings_table() in (DOCS / "serving.md").read_text(), "regenerate it: python -c 'from whisperwire.settings import settings_table; print(settings_table())'"


# --------------------------------------------------------------------------- TLS


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whisperwire test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_from_the_config_file_serves_wss_and_https(tmp_path: Path, clips) -> None:
    cert, key = self_signed(tmp_path)
    config = tmp_path / "serve.toml"
    config.write_text(f'ssl_certfile = "{cert}"\nssl_keyfile = "{key}"\n')
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(whisperwire("serve", "--config", str(config), "--port", str(port)), stdout=subprocess.DEVNULL, stderr=sink)
    trust = ssl.create_default_context(cafile=str(cert))
    clip = clips["en_timit_LDC93S1.wav"]
    audio = s16le(np.concatenate([read_wav(clip.path), SILENCE]))

    async def over_tls() -> str:
        received = []
        async with connect(f"wss://127.0.0.1:{port}/v1/websocket", ssl=trust) as ws:
            await ws.send("{}")
            await ws.send(audio)
            await ws.send('{"terminate_session": true}')
            received = [json.loads(raw) async for raw in ws]
            assert ws.close_code == 1000
        return " ".join(m["transcript"] for m in received if m["is_final"])

    async def plain_is_refused() -> None:
        with pytest.raises(Exception):  # noqa: B017 - any handshake failure: there is no plain ws here
            async with connect(f"ws://127.0.0.1:{port}/v1/websocket", open_timeout=5):
                pass

    async def untrusted_is_refused() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(f"wss://127.0.0.1:{port}/v1/websocket", ssl=ssl.create_default_context()):
                pass

    try:
        wait_ready(f"https://127.0.0.1:{port}", process, trust)
        assert word_error_rate(clip.reference, asyncio.run(over_tls())) <= 0.2
        asyncio.run(plain_is_refused())
        asyncio.run(untrusted_is_refused())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    stderr = log.read_text()
    assert f"listening on wss://127.0.0.1:{port}/v1/websocket" in stderr
