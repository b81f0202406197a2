"""The `sftprep` command: one subcommand per job."""

from __future__ import annotations

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


def main(argv: Optional[Sequence[str]] = None) -> int:
    # transformers warns at import that torch is absent; the pipeline never needs torch.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        from sftprep.pipeline.run import main as run_main

        return run_main(rest)
    if command == "inspect":
        from sftprep.views.inspect_cli import main as inspect_main

        return inspect_main(rest)
    if command == "train":
        from sftprep.trainer.cli import main as train_main

        return train_main(rest)
    print(f"sftprep: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def entry() -> None:
    """The console script. Exits without the interpreter's module teardown, which costs over a
    second after Beam, gRPC and pyarrow are loaded; every output file is closed by then."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
