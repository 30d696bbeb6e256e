"""Sensitivity estimates.  This package imports no torch; the estimators that need it
live in submodules and import torch themselves."""

from .table import SensitivityTable

__all__ = ["SensitivityTable"]
