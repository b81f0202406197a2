"""What the launch's input hash costs on a file that is not in the page cache (Linux only).

    python3 -m bench.cold_hash bench/work/chat_10000000.jsonl --code /tmp/old --code .

For each checkout given (`--code`, in turn, `--runs` times), drops the file from the page cache
(`files.forget_read`, which needs nothing but read access), waits, then times that
checkout's `sftprep.pipeline.files.fingerprint` on it in a fresh process and prints, as JSON,
its wall, user and system seconds. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from sftprep.pipeline import files

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from sftprep.pipeline import files
before, began = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
found = files.fingerprint(sys.argv[2])
wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": round(wall, 2), "user_s": round(after.ru_utime - before.ru_utime, 2),
                  "system_s": round(after.ru_stime - before.ru_stime, 2),
                  "sha256": found.sha256}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--code", action="append", required=True,
                        help="a checkout of sftprep (its root folder); repeat to alternate")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait after dropping the file from the page cache")
    args = parser.parse_args(argv)
    rows = []
    for run in range(args.runs):
        for code in args.code:
            files.forget_read(args.path, 0, os.path.getsize(args.path))
            time.sleep(args.settle)  # let the kernel settle what it just freed
            out = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(code), args.path],
                                 check=True, capture_output=True, text=True).stdout
            rows.append({"code": code, "run": run + 1, **json.loads(out)})
    json.dump({"path": args.path, "bytes": os.path.getsize(args.path), "rows": rows}, sys.stdout,
              indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
