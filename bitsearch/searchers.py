"""The searcher registry: ``bitsearch.searchers.get("ilp")``, ``available()``, ``create()``."""

from .search import ENTRY_POINT_GROUP, available, create, get, register

__all__ = ["available", "create", "get", "register", "ENTRY_POINT_GROUP"]
