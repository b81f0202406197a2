"""Flex Template entry point: Dataflow passes every template parameter as --name=value."""

import sys

from sftprep.pipeline.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
