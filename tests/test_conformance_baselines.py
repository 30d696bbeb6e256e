"""The baseline searchers pass the shared conformance suite."""

from conformance import SearcherConformance


class TestUniform(SearcherConformance):
    searcher = "uniform"
    granularities = ("layer", "kernel")


class TestRandom(SearcherConformance):
    searcher = "random"
    settings = {"samples": 6}
    granularities = ("layer", "kernel")


class TestExhaustive(SearcherConformance):
    searcher = "exhaustive"
    granularities = ("layer",)
