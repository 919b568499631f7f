"""Degraded answers for examples/pipeline.py, named by import path in the policies.

`fetch_features` falls back to `population_mean` while the feature store's breaker is open:
the average feature row of the training data, so the model still answers (less well)
instead of failing the request.
"""

from __future__ import annotations

import pandas as pd

_MEAN: list[pd.Series] = []


def remember_population(rows: pd.DataFrame) -> None:
    """Keep the average row of ``rows`` (the training data) for ``population_mean``."""
    _MEAN[:] = [rows.mean(axis=0)]


def population_mean(entity_id: int) -> pd.Series:
    """The fallback of ``fetch_features``: same arguments, the training data's average row
    (a Series indexed by column name, as the feature store's rows are)."""
    if not _MEAN:
        raise LookupError("no population kept yet: call remember_population() first")
    return _MEAN[0].copy()
