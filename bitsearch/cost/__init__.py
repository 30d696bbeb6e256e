"""Cost models.  The cost of a policy is computed here and nowhere else.

Built-ins: ``size`` (bits), ``bits`` (effective bits per quantized weight, scales
included), ``bops``, ``energy`` (pJ, 45 nm), ``bitfusion`` (ms on a Bit Fusion style
accelerator) and ``latency`` (a measured table: see :class:`LatencyTableCost`).
"""

from __future__ import annotations

from ..errors import CostModelError
from .base import CostModel, effective_act_bits
from .models import BitfusionCost, BopsCost, EffectiveBitsCost, EnergyCost, SizeCost
from .tables import LatencyTableCost, TableCost
from .units import UnitTables, unit_tables

ANALYTIC = {"size": SizeCost, "bops": BopsCost, "energy": EnergyCost, "bitfusion": BitfusionCost}
COST_NAMES = tuple(ANALYTIC) + ("bits", "latency")


def make_cost_model(name: str, *, latency_table: str | None = None, space=None) -> CostModel:
    """A cost model by name; ``latency`` needs a measured table file; ``bits`` (and
    ``size`` with a scale granularity) need the ``space`` they price."""
    if name == "size":
        return SizeCost(scale_group=None if space is None else space.scale_group)
    if name == "bits":
        if space is None:
            raise CostModelError("the bits cost is built for a space: make_cost_model('bits', space=...)")
        return EffectiveBitsCost(space)
    if name in ANALYTIC:
        return ANALYTIC[name]()
    if name == "latency":
        if not latency_table:
            raise CostModelError("a 'latency' budget needs a measured table: pass --latency-table FILE "
                                 "(see 'bitsearch latency template'), or budget the analytic "
                                 "accelerator model with bitfusion=...")
        return LatencyTableCost.load(latency_table)
    raise CostModelError(f"unknown cost {name!r}: known costs are {', '.join(COST_NAMES)}")


__all__ = ["CostModel", "SizeCost", "EffectiveBitsCost", "BopsCost", "EnergyCost", "BitfusionCost",
           "LatencyTableCost", "TableCost", "make_cost_model", "unit_tables", "UnitTables", "effective_act_bits",
           "ANALYTIC", "COST_NAMES"]
