"""Entry point for `ray job submit -- python jobs/rerank.py --config configs/rerank-gpu.yaml [flags]`."""

import sys

from embedrank.cli import main

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
