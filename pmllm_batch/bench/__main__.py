"""``python -m pmllm_batch.bench --library-worker SPEC RESULT``: the child process of a full bench's library runs."""

import sys

from .library import worker_main

if len(sys.argv) == 4 and sys.argv[1] == "--library-worker":
    sys.exit(worker_main(sys.argv[1:]))
sys.exit("usage: pmllm-batch bench (this module's own entry point is internal)")
