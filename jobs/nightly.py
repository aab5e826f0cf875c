"""Entry point for `ray job submit -- python jobs/nightly.py --config configs/nightly.yaml [flags]`."""

import sys

from embedrank.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
