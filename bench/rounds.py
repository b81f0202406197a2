"""Where a local run's time goes, by round of the inline engine (sftprep/pipeline/inline.py).

    python3 -m bench.rounds -- run --input bench/work/pc_100000.jsonl --template separator \
        --output /tmp/out --progress never

Runs `sftprep` with the arguments after `--` in this process and prints, as JSON, the seconds
from start to the inline engine's start (imports, launch checks, tokenizer), each round
(prepare: ranges read and prepared on the children; totals: a mixture's; write: shards), the
final metadata (stats, report, manifest) and the whole run. The rounds are timed from the
parent: a round ends when its last result is back.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any, Dict


def main(argv=None) -> int:
    start = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sftprep_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    sftprep_args = [a for a in args.sftprep_args if a != "--"]
    from sftprep.cli import main as sftprep_main
    from sftprep.pipeline import inline

    seconds: Dict[str, Any] = {}
    run_rounds, run_inline, finalize = inline._Rounds.__call__, inline.run_inline, inline.finalize

    def timed_rounds(self, tasks):
        began = time.monotonic()
        tasks = iter(tasks)
        first = next(tasks)
        yield from run_rounds(self, itertools.chain([first], tasks))
        seconds[f"round {first[0]}"] = round(time.monotonic() - began, 3)

    def timed_inline(*a, **k):
        seconds["until the engine starts"] = round(time.monotonic() - start, 3)
        return run_inline(*a, **k)

    def timed_finalize(*a, **k):
        began = time.monotonic()
        try:
            return finalize(*a, **k)
        finally:
            seconds["final metadata"] = round(time.monotonic() - began, 3)

    inline._Rounds.__call__, inline.run_inline, inline.finalize = (
        timed_rounds, timed_inline, timed_finalize)
    code = sftprep_main(sftprep_args)
    seconds["whole run"] = round(time.monotonic() - start, 3)
    json.dump({"exit": code, "seconds": seconds}, sys.stdout, indent=1)
    print()
    return code


if __name__ == "__main__":
    sys.exit(main())
