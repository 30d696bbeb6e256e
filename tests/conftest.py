import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Float weights and data cached once per test session, outside the user's cache
    unless BITSEARCH_TEST_CACHE names a persistent one."""
    path = os.environ.get("BITSEARCH_TEST_CACHE") or str(tmp_path_factory.mktemp("bitsearch-cache"))
    old = os.environ.get("BITSEARCH_CACHE")
    os.environ["BITSEARCH_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("BITSEARCH_CACHE", None)
    else:
        os.environ["BITSEARCH_CACHE"] = old


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (restored after): small models run faster and the
    same on every machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
