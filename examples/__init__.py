"""Runnable examples of guardrails; `examples.schemas` holds the models the policies name."""
