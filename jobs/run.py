"""Entry point for `ray job submit -- python jobs/run.py --config CONFIG`: embed and rerank in one Ray job."""

import sys

from embedrank.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
