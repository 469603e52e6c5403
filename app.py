"""Start localchat: `python app.py --help` lists every flag."""

import sys

from localchat.cli import main

if __name__ == "__main__":
    sys.exit(main())
