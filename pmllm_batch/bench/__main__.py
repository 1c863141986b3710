"""``python -m pmllm_batch.bench --library-worker|--load-worker|--e2e-worker|--ray-worker SPEC RESULT``: the bench's
child processes (library runs; one model load; end to end and the no-op rank; the Ray engine's throughput)."""

import sys

from . import end_to_end, library, load
from . import ray as ray_section

if len(sys.argv) == 4 and sys.argv[1] == "--library-worker":
    sys.exit(library.worker_main(sys.argv[1:]))
if len(sys.argv) == 4 and sys.argv[1] == "--load-worker":
    sys.exit(load.worker_main(sys.argv[1:]))
if len(sys.argv) == 4 and sys.argv[1] == "--e2e-worker":
    sys.exit(end_to_end.worker_main(sys.argv[1:]))
if len(sys.argv) == 4 and sys.argv[1] == "--ray-worker":
    sys.exit(ray_section.worker_main(sys.argv[1:]))
sys.exit("usage: pmllm-batch bench (this module's own entry point is internal)")
