"""Searchers that solve or enumerate: uniform, uniform-width, random, exhaustive (and ilp, fracbits)."""
