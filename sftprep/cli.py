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


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """Makes `import pandas` fail, as if pandas were not installed.

    Beam imports pandas when it is installed, only to register its DataFrame API's types, and
    pyarrow imports it on its first array built from a list; both treat it as optional, and
    nothing a run does needs it. It costs about a tenth of a 10-record run's CPU time.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"sftprep run does not use {fullname}", name=fullname)
        return None


def entry() -> None:
    """The console script. Exits without the interpreter's module teardown, which costs over a
    second after Beam, gRPC and pyarrow are loaded; every output file is closed by then.

    `sftprep run` processes run without pandas (see _WithoutPandas); only the console script
    does that, since the process ends with the command (`main` leaves a caller's imports alone).
    """
    if sys.argv[1:2] == ["run"] and "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
