"""``python -m pmllm_batch.bench --library-worker|--load-worker SPEC RESULT``: the bench's child processes (library
runs; one model load)."""

import sys

from . import library, load

if len(sys.argv) == 4 and sys.argv[1] == "--library-worker":
    sys.exit(library.worker_main(sys.argv[1:]))
if len(sys.argv) == 4 and sys.argv[1] == "--load-worker":
    sys.exit(load.worker_main(sys.argv[1:]))
sys.exit("usage: pmllm-batch bench (this module's own entry point is internal)")
