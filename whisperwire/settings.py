"""Every setting of `whisperwire serve`, and where each one comes from.

`Settings` names each setting once: its type, default, meaning, command-line flag, environment
variable and config-file key; the flags, the environment reading, the config file and the table
in docs/serving.md are all made from it. Precedence: flag, then environment variable, then
config file (TOML), then default. API keys add up across the sources instead (flags, variable,
config file, key file), so a new key can be rolled in by any route without dropping the others.

Hand-written rather than pydantic-settings: layering is three dict merges that pydantic then
validates, and what would need custom sources there — comma-separated lists in variables, a
config path given by a flag, keys that add up, argparse flags made from the same fields — is
most of this module either way.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import ServerConfig
from .protocol import SessionLimits

ENV_PREFIX = "WHISPERWIRE_"
CONFIG_ENV = "WHISPERWIRE_CONFIG"


class SettingsError(Exception):
    """A setting that cannot be used; the message names it and where it came from."""


def _setting(default: Any, meaning: str, *, flag: str | None = None, env: str | None = None, shown: str | None = None) -> Any:
    extra = {k: v for k, v in {"flag": flag, "env": env, "shown": shown}.items() if v is not None}
    return Field(default, description=meaning, json_schema_extra=extra)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = _setting("127.0.0.1", "address to listen on")
    port: Annotated[int, Field(ge=0, le=65535)] = _setting(8000, "TCP port")
    model: str = _setting(
        "tiny.en", "`tiny.en`, `base`, a CTranslate2 Whisper directory, or a hub id (see Models)"
    )
    device: Literal["cpu", "cuda"] = _setting("cpu", "`cpu` or `cuda`")
    compute_type: str = _setting("default", "CTranslate2 compute type; `default` is `int8` on cpu, `float16` on cuda")
    cpu_threads: Annotated[int, Field(ge=1)] | None = _setting(
        None,
        "CTranslate2 threads; the default counts the cores this process may run on (CPU affinity), "
        "which CTranslate2's own default does not",
        shown="cores usable",
    )
    workers: Annotated[int, Field(ge=1)] | None = _setting(
        None,
        "recognitions run at once in this process, each on its own CTranslate2 replica with "
        "`--cpu-threads` threads (by default the usable cores shared out among them); one thread "
        "each holds more streams than one replica with every thread (BENCHMARKS.md)",
        shown="cores usable (1 on cuda)",
    )
    batch: Annotated[int, Field(ge=1)] | None = _setting(
        None,
        "finals a worker takes at once when several are waiting: their encoder windows go to "
        "the model in one call; 1: one at a time",
        shown="4 on cuda, 1 on cpu",
    )
    cache_dir: Path | None = _setting(
        None, "where `base` is assembled and hub models are downloaded", shown="`~/.cache/whisperwire`"
    )
    api_keys: tuple[str, ...] = _setting(
        (),
        "an accepted API key; the flag repeats, the variable takes a comma-separated list, the "
        "config key a list; keys from every source are accepted",
        flag="--api-key",
        env="WHISPERWIRE_API_KEY",
        shown="none",
    )
    api_key_file: Path | None = _setting(None, "a file of accepted keys, one a line (`#` comments)")
    allow_open: bool = _setting(False, "serve without API keys on a non-loopback address")
    allowed_origins: tuple[str, ...] = _setting(
        (),
        "browser origins (`https://app.example.com`) allowed to open a WebSocket; a handshake "
        "with another `Origin` gets HTTP 403. Empty: any origin",
        flag="--allowed-origin",
        shown="any",
    )
    ssl_certfile: Path | None = _setting(None, "PEM certificate (chain): serve `wss://` and `https://`")
    ssl_keyfile: Path | None = _setting(None, "PEM private key of the certificate, if not in the certificate file")
    metadata_timeout: Annotated[float, Field(gt=0)] = _setting(
        SessionLimits.metadata_timeout_s, "seconds a client has to send its metadata"
    )
    idle_timeout: Annotated[float, Field(gt=0)] = _setting(
        SessionLimits.idle_timeout_s, "seconds without any frame before a session is closed"
    )
    max_frame_bytes: Annotated[int, Field(ge=1024)] = _setting(
        SessionLimits.max_frame_bytes, "largest WebSocket message; a larger one closes with 1009"
    )
    send_buffer_bytes: Annotated[int, Field(ge=1024)] = _setting(
        ServerConfig.send_buffer_bytes,
        "messages waiting for a client that does not read: past this its partials are dropped, "
        "then it is closed with 1008",
    )
    drain_timeout: Annotated[float, Field(ge=0)] = _setting(
        ServerConfig.drain_timeout_s, "seconds SIGTERM waits for sessions' finals before closing them anyway"
    )
    max_sessions: Annotated[int, Field(ge=0)] = _setting(
        ServerConfig.max_sessions, "refuse new streams (`server_busy`, 1013) at this many open sessions; 0: no limit"
    )
    max_queue_wait: Annotated[float, Field(ge=0)] = _setting(
        ServerConfig.max_queue_wait_s, "refuse new streams while a final has waited this many seconds for recognition; 0: no limit"
    )
    stream_cost: Annotated[float, Field(ge=0)] | None = _setting(
        None,
        "worker seconds one second of a stream's audio costs, assumed for admission until measured; "
        "0: admit by measurement alone",
        shown="timed at start-up",
    )
    max_lag: Annotated[float, Field(ge=0)] = _setting(
        SessionLimits.max_lag_s,
        "close a real-time stream (`server_behind`, 1013) once its audio has waited this many seconds "
        "for its final; 0: never",
    )
    encoder_window: Literal["fit", "full"] = _setting(
        "full",
        "`full`: always the 30 s window Whisper was trained on; `fit`: the 20, 25 or 30 s window "
        "that holds the utterance (faster, but it can end an utterance's text early)",
    )
    draft_finals: bool = _setting(
        ServerConfig.draft_finals, "start recognising a final when the silence begins, not when its window has passed"
    )
    context_prompt: bool = _setting(
        ServerConfig.context_prompt,
        "give Whisper the text of the session's latest final after the client's `prompt` "
        "(off: it raised word error rates, BENCHMARKS.md)",
    )
    ray: bool = _setting(
        False,
        "serve through Ray Serve: an ingress and a recognizer deployment "
        "(`pip install 'whisperwire[ray]'`; docs/ray.md)",
    )
    ray_address: str | None = _setting(
        None,
        "with `--ray`: the Ray cluster to join (`auto`: the one this node belongs to)",
        shown="a new one-machine cluster",
    )
    ingress_replicas: Annotated[int, Field(ge=1)] | None = _setting(
        None, "with `--ray`: a fixed number of ingress replicas", shown="1 on one machine, else autoscaled"
    )
    recognizer_replicas: Annotated[int, Field(ge=1)] | None = _setting(
        None, "with `--ray`: a fixed number of recognizer replicas", shown="1 on one machine, else autoscaled"
    )
    inference_workers: Annotated[int, Field(ge=1)] = _setting(
        4, "with `--ray`: recognitions one ingress replica keeps in flight"
    )
    retry_timeout: Annotated[float, Field(gt=0)] = _setting(
        60.0, "with `--ray`: seconds a recognition is sent again while recognizer replicas are lost"
    )
    log_level: Literal["debug", "info", "warning", "error"] = _setting("info", "least severe level logged")
    log_format: Literal["text", "json"] = _setting("text", "`json`: one JSON object a line")
    access_log: bool = _setting(True, "log each HTTP request and WebSocket handshake")

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        for path in (self.ssl_certfile, self.ssl_keyfile, self.api_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        return self

    @property
    def limits(self) -> SessionLimits:
        return SessionLimits(
            metadata_timeout_s=self.metadata_timeout,
            idle_timeout_s=self.idle_timeout,
            max_frame_bytes=self.max_frame_bytes,
            max_lag_s=self.max_lag or None,
        )

    def server_config(self, **changes: Any) -> ServerConfig:
        """The server's part of these settings (the rest pick the model and the socket)."""
        config = ServerConfig(
            api_keys=self.api_keys,
            allowed_origins=self.allowed_origins,
            limits=self.limits,
            send_buffer_bytes=self.send_buffer_bytes,
            drain_timeout_s=self.drain_timeout,
            max_sessions=self.max_sessions or None,
            max_queue_wait_s=self.max_queue_wait or None,
            draft_finals=self.draft_finals,
            context_prompt=self.context_prompt,
        )
        return replace(config, **changes)


    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None


# --------------------------------------------------------------------------- sources


def _extra(name: str) -> dict[str, Any]:
    extra = Settings.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_of(name: str) -> str:
    return _extra(name).get("flag") or "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    return _extra(name).get("env") or ENV_PREFIX + name.upper()


def _is_list(name: str) -> bool:
    return get_origin(Settings.model_fields[name].annotation) is tuple


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(env_of(name))
        if raw is None:
            continue
        values[name] = [item.strip() for item in raw.split(",") if item.strip()] if _is_list(name) else raw
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]!r} in config file {path}")
    return values


def _keys_in(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed flags (only those given), the environment and the config file."""
    environ = os.environ if environ is None else environ
    flags = dict(flags)
    config = flags.pop("config", None) or environ.get(CONFIG_ENV)
    layers = [
        (f"config file {config}", _from_file(Path(config)) if config else {}),
        ("environment variable", _from_environment(environ)),
        ("flag", flags),
    ]
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in layers:
        merged.update(values)
        origin.update(dict.fromkeys(values, source))
    merged["api_keys"] = [key for _, values in layers for key in values.get("api_keys", ())]
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, origin)) from None
    keys = list(settings.api_keys)
    if settings.api_key_file is not None:
        keys += _keys_in(settings.api_key_file)
    return settings.model_copy(update={"api_keys": tuple(dict.fromkeys(keys))})


def _explain(exc: ValidationError, origin: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    message = error["msg"].removeprefix("Value error, ")
    if not name:
        return message
    if name not in Settings.model_fields:  # only a mapping of settings can name one that is not
        return f"unknown setting {name!r}"
    source = origin.get(name, "default")
    where = {"flag": flag_of(name), "environment variable": f"${env_of(name)}"}.get(source, source)
    return f"{name} ({where}): {message.lower()}"


# --------------------------------------------------------------------------- flags and docs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; only flags given on the command line appear in the namespace."""
    parser.add_argument("--config", default=argparse.SUPPRESS, help=f"TOML file of settings [${CONFIG_ENV}]")
    for name, field in Settings.model_fields.items():
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if field.annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif _is_list(name):
            options["action"] = "append"
            options["metavar"] = flag_of(name).lstrip("-").upper().replace("-", "_")
        elif get_origin(field.annotation) is Literal:
            options["choices"] = get_args(field.annotation)
        meaning = field.description or name.replace("_", " ")
        options["help"] = f"{meaning.replace('`', '').replace('%', '%%')} [{_shown_default(name)}; ${env_of(name)}]"
        parser.add_argument(flag_of(name), **options)


def _shown_default(name: str) -> str:
    shown = _extra(name).get("shown")
    if shown is not None:
        return shown.replace("`", "")
    default = Settings.model_fields[name].default
    if isinstance(default, bool):
        return "on" if default else "off"
    return "none" if default is None else str(default)


def settings_table() -> str:
    """The Markdown table of docs/serving.md (tests/test_settings.py keeps the two equal)."""
    rows = [
        "| flag | environment variable | config key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
        f"| `--config` | `{CONFIG_ENV}` | — | none | a TOML file of the settings below, by config key |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = _extra(name).get("shown") or ("none" if default is None else f"`{_shown_default(name)}`")
        flag = f"`{flag_of(name)}`"
        if field.annotation is bool:
            flag += f" / `--no-{flag_of(name)[2:]}`"
        rows.append(f"| {flag} | `{env_of(name)}` | `{name}` | {shown} | {field.description} |")
    return "\n".join(rows)


def workers(settings: Settings) -> int:
    """Recognitions at once in this process: one per usable core on a CPU, one on a GPU."""
    return settings.workers or (1 if settings.device == "cuda" else usable_cores())


def batch(settings: Settings) -> int:
    """Finals encoded in one call when several wait: on a GPU a batch costs about what one does;
    on this project's CPU it saved CPU but made each final later (BENCHMARKS.md, Batching)."""
    return settings.batch or (4 if settings.device == "cuda" else 1)


def threads_per_worker(settings: Settings) -> int:
    """CTranslate2 threads for each of the recognitions at once."""
    return settings.cpu_threads or max(1, usable_cores() // workers(settings))


def usable_cores() -> int:
    # CTranslate2's own default (min(4, all cores)) ignores CPU affinity and container cpusets.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
