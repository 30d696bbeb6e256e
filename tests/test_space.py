"""SearchSpace: units, ties, pins, JSON, and bit-list parsing."""

import pytest

from bitsearch.encoding import Encoding
from bitsearch.errors import SpaceError, UserInputError
from bitsearch.space import SearchSpace, parse_bits

from helpers import small_space


def test_units_and_ties():
    space = small_space()
    assert len(space.weight_units()) == 4  # conv1 and downsample share one unit
    kspace = small_space("kernel")
    assert len(kspace.weight_units()) == 8 + 12 + 12 + 12 + 10
    assert space.num_policies() == 4 ** 4
    assert small_space(act_bits=(4, 8)).num_decisions() == 8


def test_json_round_trip():
    space = small_space("kernel", act_bits=None, pinned={"stem": (8, None)})
    back = SearchSpace.from_json(space.to_json())
    assert back == space


def test_bad_spaces_name_the_problem():
    from helpers import small_layers
    with pytest.raises(SpaceError, match="not a layer"):
        SearchSpace(small_layers(), tied=(("stem", "ghost"),))
    with pytest.raises(SpaceError, match="granularity"):
        SearchSpace(small_layers(), granularity="channel")
    with pytest.raises(SpaceError, match="partly pinned"):
        SearchSpace(small_layers(), tied=(("block.conv1", "block.downsample"),), pinned={"block.conv1": (8, 8)})


@pytest.mark.parametrize("text,expected", [("2,3,4,8", (2, 3, 4, 8)), ("2-8", tuple(range(2, 9))),
                                           ("8, 4", (4, 8)), ("none", None), ("2-4,8", (2, 3, 4, 8))])
def test_parse_bits(text, expected):
    assert parse_bits(text, allow_none=True) == expected


@pytest.mark.parametrize("text", ["two", "8-2", "0,4", "", "none"])
def test_parse_bits_errors(text):
    with pytest.raises(UserInputError):
        parse_bits(text)


@pytest.mark.parametrize("granularity,act_bits", [("layer", (8,)), ("kernel", (8,)), ("layer", (4, 8)),
                                                  ("kernel", (2, 4, 8))])
def test_encoding_round_trip(granularity, act_bits):
    import numpy as np
    space = small_space(granularity, act_bits=act_bits)
    enc = Encoding(space)
    rng = np.random.default_rng(0)
    w = rng.integers(0, enc.n_weight_choices, enc.n_weight_units)
    a = rng.integers(0, enc.n_act_choices, enc.n_act_units)
    policy = enc.decode(w, a)
    from bitsearch.policy import validate_policy
    validate_policy(policy, space)
    w2, a2 = enc.encode(policy)
    assert (w2 == w).all() and (a2 == a).all()
