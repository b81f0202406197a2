"""The `sftprep` command: one subcommand per job."""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Optional, Sequence

USAGE = """usage: sftprep COMMAND [options]

commands:
  run       prepare a dataset: JSONL/JSON in, Parquet shards + stats + manifest out
            (sftprep run --help for every option)
  train     train a causal LM on a prepared dataset with PyTorch (CPU, CUDA, torchrun)
            (sftprep train --help)
  inspect   show a few examples as run prepares them: tokens, trained spans, counts
            (sftprep inspect --help)
"""
COMMANDS = {"run": "sftprep.pipeline.run", "inspect": "sftprep.views.inspect_cli",
            "train": "sftprep.trainer.cli"}  # each module's main(argv), imported when run


def main(argv: Optional[Sequence[str]] = None) -> int:
    # transformers warns at import that torch is absent; the pipeline never needs torch.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in COMMANDS:
        return importlib.import_module(COMMANDS[command]).main(rest)
    print(f"sftprep: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


# What `sftprep run` never uses, though Beam or pyarrow import it when it is installed. Beam
# imports pandas to register its DataFrame API's types and Pub/Sub's client for streaming reads
# and writes, and pyarrow imports pandas on its first array built from a list; all of them
# treat these as optional. Together about a tenth of a 10-record run's CPU time.
UNUSED_BY_RUN = ("pandas", "google.cloud.pubsub", "google.cloud.pubsub_v1")


class _Unused(importlib.abc.MetaPathFinder):
    """Makes importing UNUSED_BY_RUN fail, as if those packages were not installed.

    `importlib.util.find_spec` of them raises ModuleNotFoundError instead of returning None;
    no library a run loads asks that way (they `try: import`).
    """

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == name or fullname.startswith(name + ".") for name in UNUSED_BY_RUN):
            raise ModuleNotFoundError(f"sftprep run does not use {fullname}", name=fullname)
        return None


def entry() -> None:
    """The console script. Exits without the interpreter's module teardown, which costs over a
    second after Beam, gRPC and pyarrow are loaded; every output file is closed by then.

    `sftprep run` processes run without UNUSED_BY_RUN; only the console script does that, since
    the process ends with the command (`main` leaves a caller's imports alone).
    """
    if sys.argv[1:2] == ["run"] and not any(name in sys.modules for name in UNUSED_BY_RUN):
        sys.meta_path.insert(0, _Unused())
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
