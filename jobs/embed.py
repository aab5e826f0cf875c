"""Entry point for `ray job submit -- python jobs/embed.py --config configs/gpu-cluster.yaml [flags]`.

The same code as `embedrank embed`; under `ray job submit` RAY_ADDRESS is set, so the job joins the cluster.
"""

import sys

from embedrank.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
