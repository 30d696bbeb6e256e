"""The episode walk over a bitsearch Problem (:class:`QuantWalk`, plain numpy) and its
gymnasium face (:class:`QuantEnv`, a thin adapter).

Importing this package registers ``bitsearch/QuantEnv-v0`` (by entry-point string), so::

    import gymnasium, bitsearch.envs
    env = gymnasium.make("bitsearch/QuantEnv-v0", problem=problem, action_type="discrete")
"""

import gymnasium

ENV_ID = "bitsearch/QuantEnv-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="bitsearch.envs.quant_env:QuantEnv")

from .projection import project  # noqa: E402
from .quant_env import QuantEnv  # noqa: E402
from .walk import OBSERVATION_FEATURES, EpisodeResult, QuantWalk  # noqa: E402

__all__ = ["ENV_ID", "QuantEnv", "QuantWalk", "EpisodeResult", "OBSERVATION_FEATURES", "project"]
