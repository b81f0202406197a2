"""`sftprep train ...`: parse, train, print one line on a user error (with the traceback
before it under --verbose)."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Optional, Sequence

from sftprep.config import ConfigError


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    from sftprep.contained import one_line
    from sftprep.trainer.args import parse_args
    from sftprep.trainer.loop import train

    transformers_logging.disable_progress_bar()  # our log lines, and our bar on a terminal only

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_args(args)
        train(config)
    except ConfigError as err:  # DatasetError too: a bad manifest, LATEST, path or shard
        if "--verbose" in args:
            traceback.print_exc()
        print(f"sftprep: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # torchrun runs the trainer as `python -m sftprep.trainer.cli`
    sys.exit(main())
