import sys

from sftprep.cli import main

sys.exit(main())
