"""Pydantic models that the example policies name by import path (validate.input)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """What `predict` accepts: a request id of the form `req-<n>` and a feature array."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    request_id: str = Field(pattern=r"^req-\d+$")
    features: np.ndarray
