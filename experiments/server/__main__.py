"""``python -m experiments.server ...`` — the same options as ``ablate server``."""

import sys

from experiments.server.command import main

if __name__ == "__main__":
    sys.exit(main())
