"""Pydantic models named by import path in tests' policies."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Order(BaseModel):
    quantity: int = Field(gt=0)
    sku: str = Field(pattern=r"^[A-Z]{3}-\d+$")


class Prediction(BaseModel):
    label: str
    score: float = Field(ge=0, le=1)


class Threshold(BaseModel):
    t: float = Field(ge=0)


class Nothing(BaseModel):
    """A model with no fields, for a function with no parameters."""
