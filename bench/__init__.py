"""tagsweeper's benchmarks: see bench/README.md (one command each, results in docs/benchmarks.md)."""
