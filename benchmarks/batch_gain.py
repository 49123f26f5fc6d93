"""Does batching utterances of different streams pay on this device?

Recognises the same utterances (the shared English clips up to 15 s, each in the 20 s encoder
window the server gives them) one at a time and in batches of B, through CTranslate2 directly
(encode, then greedy generate with timestamps, as the server decodes), and reports CPU and
wall time per utterance. The server batches nothing; this says whether it should.

    python benchmarks/batch_gain.py                       # tiny.en, cpu, 2 threads
    python benchmarks/batch_gain.py --device cuda --batches 1,4,16
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio, pad_or_trim

from whisperwire.engine import encoder_window_frames
from whisperwire.models import resolve_model

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "audio" / "manifest.tsv"


def utterance_features(model: WhisperModel, manifest: Path) -> list[np.ndarray]:
    with manifest.open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r["language"] == "en"]
    features = []
    for row in rows:
        if float(row["duration_s"]) > 15.0:
            continue
        mel = model.feature_extractor(decode_audio(str(manifest.parent / row["file"])))
        features.append(pad_or_trim(mel, encoder_window_frames(mel.shape[-1])))
    return features


def recognise(model: WhisperModel, batch: list[np.ndarray], prompt: list[int]) -> int:
    encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(batch))))
    results = model.model.generate(
        encoded, [prompt] * len(batch), beam_size=1, max_length=448, return_no_speech_prob=True, suppress_blank=True
    )
    return sum(len(r.sequences_ids[0]) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    args = parser.parse_args()
    model = WhisperModel(str(resolve_model(args.model)), device=args.device, compute_type=args.compute_type, cpu_threads=args.threads)
    features = utterance_features(model, args.manifest)
    prompt = list(model.hf_tokenizer.encode("<|startoftranscript|>", add_special_tokens=False).ids)
    recognise(model, features[:1], prompt)  # lazy initialisation, not measured
    print(f"{len(features)} utterances in 20 s windows; {args.model} {args.compute_type} on {args.device}, {args.threads} threads")
    base: float | None = None
    for size in (int(b) for b in args.batches.split(",")):
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = sum(recognise(model, features[i : i + size], prompt) for i in range(0, len(features), size))
            walls.append((time.perf_counter() - wall) / len(features))
            cpus.append((time.process_time() - cpu) / len(features))
        wall_ms, cpu_ms = statistics.median(walls) * 1000, statistics.median(cpus) * 1000
        base = base or cpu_ms
        print(f"batch {size:2d}: {wall_ms:6.0f} ms wall, {cpu_ms:6.0f} ms CPU per utterance ({base / cpu_ms:.2f}x CPU vs batch 1; {tokens} tokens)")


if __name__ == "__main__":
    main()
