"""`whisperwire bench` as a user runs it, on one short clip and one stream (the real runs are in
BENCHMARKS.md: too slow and too noisy for CI)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    # Every word of the sentence in its one final, none late, and the final not emptier than its partial.
    assert summary["words_delivered"] >= 9 and summary["word_delivery_s"]["n"] == summary["words_delivered"]
    assert summary["late_words"] == 0 and summary["empty_finals_after_partial"] == 0
    assert summary["utterances_with_partial"] == 1 and summary["clip_last_word_s"]["n"] == 1
    assert "which final carries each word" in done.stdout
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


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", Path(__file__).parents[1] / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_word_is_scored_against_its_turn_s_final_and_a_late_one_is_named() -> None:
    bench = load_bench()
    rate = 16_000
    # One clip of two turns: "the birch canoe" (0.0-1.5 s) and "slid on the planks" (2.5-4.0 s),
    # frames sent one per 0.1 s from wall time 100, the silence window 0.3 s.
    clip = bench.Clip("c.wav", Path("c.wav"), 4.0, "the birch canoe slid on the planks")
    ends = [0.4, 0.9, 1.4, 2.9, 3.2, 3.5, 3.9]
    offline = {"c.wav": bench.Offline("", [(w, e - 0.1, e) for w, e in zip(clip.reference.split(), ends)])}
    programme = bench.Programme(b"", [bench.Placed(clip, 0, 4 * rate)], [bench.Region(0, 24_000), bench.Region(40_000, 64_000)])
    log = bench.StreamLog(frame_ends=[round((i + 1) * 0.1 * rate) for i in range(40)], sent=[100 + 0.1 * i for i in range(40)])
    # The first final leaves "canoe" out; the second carries it, late, 1.2 s after the first.
    log.seen = [
        bench.Seen(101.0, False, "0", "the birch canoe", [(0.0, 1.4)]),
        bench.Seen(102.0, True, "0", "the birch", [(0.0, 0.9)]),
        bench.Seen(104.0, False, "1", "slid on", [(2.5, 3.2)]),
        bench.Seen(104.5, True, "1", "", []),
        bench.Seen(105.0, False, "2", "canoe slid", [(2.5, 3.2)]),
        bench.Seen(105.2, True, "2", "canoe slid on the planks", [(1.0, 3.9)]),
    ]
    delivery = bench.word_delivery(programme, log, offline, 0.3)
    assert (delivery.words, delivery.delivered) == (7, 7)
    assert [(w["word"], w["final"]) for w in delivery.late] == [("canoe", "2")]
    # "the" ended at 0.4 s (sent at 100.3), and its final came at 102.0; its turn ended at 1.5 s.
    assert delivery.spoken_s[0] == pytest.approx(1.7) and delivery.after_turn_s[0] == pytest.approx(102.0 - 101.4)
    # The clip's last word, "planks", ended at 3.9 s (sent at 103.8): its final came at 105.2.
    assert delivery.clip_last_s == [pytest.approx(1.4)]
    defects = bench.turn_defects(log)
    # Three utterances showed words; the second's final came back empty, the first's lost one word.
    assert (defects.with_partial, defects.empty_finals) == (3, 1)
    assert defects.lost_words == 1 + 2  # "canoe" of the first, "slid on" of the second
