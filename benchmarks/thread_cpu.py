"""Where a running server's CPU goes, by thread, over a window of time (Linux).

    python benchmarks/thread_cpu.py PID [SECONDS]

Reads each thread's CPU time from /proc/PID/task/*/stat at the start and end of the window and
names the Python threads from `py-spy dump` (the event loop is MainThread; `uvloop_N` are the
worker threads that decode audio and run the VAD and the session; `whisperwire-inference-N`
the scheduler's). Threads Python does not know are native pools: CTranslate2's (the model)
and ONNX Runtime's, where they have their own. py-spy itself samples only Python threads, so
it cannot see the model's CPU; this can.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

NATIVE = "native (CTranslate2, ONNX Runtime pools)"


def cpu_ticks(pid: int) -> dict[int, int]:
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def python_thread_names(pid: int) -> dict[int, str]:
    py_spy = Path(sys.executable).with_name("py-spy")
    dump = subprocess.run([str(py_spy), "dump", "--pid", str(pid)], capture_output=True, text=True, check=True).stdout
    names = {}
    for line in dump.splitlines():
        if match := re.match(r'Thread (\d+) \(\w+[^)]*\): "([^"]*)"', line):
            names[int(match.group(1))] = re.sub(r"_\d+$", "_N", match.group(2))
    return names


def main(pid: int, seconds: float) -> None:
    names = python_thread_names(pid)
    before, began = cpu_ticks(pid), time.monotonic()
    time.sleep(seconds)
    after, wall = cpu_ticks(pid), time.monotonic() - began
    per_second = os.sysconf("SC_CLK_TCK")
    by_thread: collections.Counter[str] = collections.Counter()
    for tid, ticks in after.items():
        by_thread[names.get(tid, NATIVE)] += (ticks - before.get(tid, 0)) / per_second
    total = sum(by_thread.values())
    print(f"server CPU {total:.1f} s over {wall:.0f} s = {total / wall:.2f} cores")
    for name, cpu in by_thread.most_common():
        print(f"  {name:42s} {cpu:6.1f} s  {cpu / total if total else 0.0:6.1%}")


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
