"""`python -m addon.refresh`: the benchmark refresh sidecar (same as `orchestrator refresh`)."""

from addon.refresh.sidecar import main

raise SystemExit(main())
