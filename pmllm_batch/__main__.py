from pmllm_batch.cli import main

raise SystemExit(main())
