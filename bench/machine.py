"""What a command costs the whole machine, kernel included (Linux only).

    python3 -m bench.machine -- python3 -m bench.harness --sizes 10000000 --corpora chat ...

Runs the command and prints, as JSON, its exit status and wall seconds, then the machine's CPU
seconds over that time from /proc/stat (user, system, idle, iowait: every process, so the
kernel's work for the page cache and the disk counts), and the kilobytes paged in from and out
to disk from /proc/vmstat. On this benchmark's 2-core VM the kernel's share is not small:
reading a file that is not cached costs about 2.5 s of system CPU per GB and writing one about
3 s, time the run's own processes lose on a busy machine. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List


def snapshot() -> Dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    with open("/proc/vmstat") as vmstat:
        counters = dict(line.split() for line in vmstat)
    return {"user_s": (int(fields[0]) + int(fields[1])) / ticks,
            "system_s": (int(fields[2]) + int(fields[5]) + int(fields[6])) / ticks,
            "idle_s": int(fields[3]) / ticks, "iowait_s": int(fields[4]) / ticks,
            "disk_read_kb": int(counters["pgpgin"]), "disk_written_kb": int(counters["pgpgout"])}


def measure(command: List[str]) -> Dict[str, object]:
    before, began = snapshot(), time.monotonic()
    code = subprocess.call(command)
    wall, after = time.monotonic() - began, snapshot()
    used = {key: round(after[key] - before[key], 2) for key in before}
    return {"command": command, "exit": code, "wall_s": round(wall, 2), **used}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    command = [a for a in parser.parse_args(argv).command if a != "--"]
    if not command:
        parser.error("give the command to measure after --")
    result = measure(command)
    json.dump(result, sys.stdout, indent=1)
    print()
    return int(result["exit"])


if __name__ == "__main__":
    sys.exit(main())
