"""The packaged Hydra config group ``guardrails`` (``pkg://guardrails.conf`` on a search path)."""
