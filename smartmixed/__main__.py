"""``python -m smartmixed``."""

import sys

from smartmixed.cli import console

if __name__ == "__main__":
    sys.exit(console())
