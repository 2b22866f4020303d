"""Benchmarks: scripts that print figures (bench/README.md). Run from the repository root as
``python -m bench.<script>``."""
