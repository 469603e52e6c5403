"""`python -m localchat`: the same command line as the `localchat` script (works without the venv's
scripts folder on PATH, e.g. `py -m localchat` on Windows)."""

import sys

from localchat.cli import main

if __name__ == "__main__":
    sys.exit(main())
