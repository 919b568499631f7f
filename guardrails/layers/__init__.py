"""The layers, one module per kind: its YAML block model and its sync and async builders.

The order they wrap a function in is one table, ``guardrails._chain.ORDER``.
"""
