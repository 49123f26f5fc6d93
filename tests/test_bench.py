"""`whisperwire bench` as a user runs it, on one short clip and one stream (the real runs are in
BENCHMARKS.md: too slow and too noisy for CI)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import AUDIO_DIR


def test_bench_on_one_clip_and_one_stream_measures_the_final_and_writes_json_and_a_plot(tmp_path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    command = [sys.executable, "-m", "whisperwire.cli", "bench", "--streams", "1", "--clip", "en_timit_LDC93S1"]
    command += ["--manifest", str(AUDIO_DIR / "manifest.tsv"), "--partials", "--json", str(out), "--plot", str(png)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "whisperwire" in done.stdout and "final p95" in done.stdout
    [run] = json.loads(out.read_text())["runs"]
    summary = run["summary"]
    assert (summary["system"], summary["streams"], summary["refused"], summary["errors"]) == ("whisperwire", 1, 0, [])
    # One sentence, one final: after the 300 ms silence window, and not much later on any machine.
    assert summary["final_latency_s"]["n"] == 1 and summary["speech_without_final"] == 0
    assert 0.3 <= summary["final_latency_s"]["p50"] < 10.0
    assert summary["partials"] >= 1 and summary["first_partial_s"]["n"] == 1
    assert summary["wer_streaming"] <= 0.25 and summary["wer_offline"] <= 0.25
    assert summary["duplicated_finals"] == 0 and summary["out_of_order_finals"] == 0
    assert summary["server_cpu_s"] > 0 and summary["server_peak_rss_mb"] > 50
    # The final's time after it was asked for, in parts, from the server's metrics.
    stages = summary["final_stages_mean_s"]
    assert set(stages) == {"queue", "recognition", "encode", "send", "asked_to_sent"}
    assert 0 < stages["encode"] and 0 <= stages["send"] <= stages["asked_to_sent"]
    assert "per final, mean s" in done.stdout
    assert set(summary["drafts"]) == {"promoted", "withdrawn", "wasted", "ran_alone"}
    assert summary["drafts"]["promoted"] + summary["drafts"]["ran_alone"] >= 1  # the one final began as a draft
    [stream] = run["streams"]
    assert "greasy" in stream["hypotheses"]["0"].lower()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_stream_counts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "whisperwire.cli", "bench", "--streams", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--streams takes positive counts" in done.stderr
