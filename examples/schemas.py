"""Pydantic models that the example policies name by import path (validate.input)."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """What `predict` accepts: a request id of the form `req-<n>` and a DataFrame of features
    (its columns, dtypes and values are checked by the policy's `validate.args.features`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    request_id: str = Field(pattern=r"^req-\d+$")
    features: pd.DataFrame
