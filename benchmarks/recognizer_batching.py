"""Would a recognizer replica gain from batching? Whisper on B utterances at once vs one by one.

A Ray Serve recognizer could gather recognitions from every ingress (``@serve.batch``) and run
them as one CTranslate2 call. That pays only if one call on B utterances costs less than B
calls on one. This measures exactly that work — Whisper's encoder on the 30 s windows and greedy
decoding with timestamps, as WhisperEngine.transcribe runs it — on the shared English clips:
for each batch size, the same utterances, B at a time, in rounds that interleave the batch
sizes (so a neighbour's load on a shared machine hits them all alike). Reported: the median
seconds per utterance, and its ratio to batch size 1 (under 1: batching helps).

    python benchmarks/recognizer_batching.py                       # tiny.en, all cores
    python benchmarks/recognizer_batching.py --model base --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio
from faster_whisper.tokenizer import Tokenizer

from whisperwire.cli import usable_cores
from whisperwire.engine import SAMPLE_RATE
from whisperwire.models import resolve_model

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "audio" / "manifest.tsv"
WINDOW = 30 * SAMPLE_RATE


def utterances(manifest: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` English clips of at most 30 s: each one utterance, one window."""
    with manifest.open(encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r["language"] == "en"]
    rows = [r for r in rows if float(r["duration_s"]) <= 30][:count]
    return [decode_audio(str(manifest.parent / r["file"]), sampling_rate=SAMPLE_RATE) for r in rows]


class Batcher:
    def __init__(self, model: WhisperModel) -> None:
        self.model = model
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        self.prompt = model.get_prompt(tokenizer, [], without_timestamps=False)

    def features(self, audio: np.ndarray) -> np.ndarray:
        # transcribe() pads the utterance to a whole window; so does this.
        padded = np.pad(audio, (0, max(0, WINDOW - len(audio))))[:WINDOW]
        return self.model.feature_extractor(padded)[:, : self.model.feature_extractor.nb_max_frames]

    def run(self, features: list[np.ndarray]) -> None:
        encoded = self.model.encode(np.stack(features))
        self.model.model.generate(
            encoded,
            [self.prompt] * len(features),
            beam_size=1,
            max_length=self.model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="CTranslate2 threads [cores usable]")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    count = max(sizes)
    model = WhisperModel(str(resolve_model(args.model)), device="cpu", compute_type="int8", cpu_threads=args.threads)
    batcher = Batcher(model)
    features = [batcher.features(a) for a in utterances(args.manifest, count)]
    batcher.run(features[:1])  # lazy initialisation, outside the timings

    seconds: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            began = time.perf_counter()
            for i in range(0, count, size):
                batcher.run(features[i : i + size])
            seconds[size].append((time.perf_counter() - began) / count)

    base = statistics.median(seconds[sizes[0]])
    print(f"{args.model}, {args.threads} threads, {count} utterances, {args.rounds} rounds")
    print("batch  s/utterance (median)  vs batch 1   all rounds")
    results = []
    for size in sizes:
        median = statistics.median(seconds[size])
        print(f"{size:>5}  {median:>20.3f}  {median / base:>10.2f}   {' '.join(f'{s:.3f}' for s in seconds[size])}")
        results.append({"batch": size, "median_s_per_utterance": median, "ratio": median / base, "rounds": seconds[size]})
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
