"""``report()``: the statistics as a rich table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from guardrails._core import stats
from guardrails._errors import _fmt_bytes

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


#: Columns shown only when some policy has something in them: (header, PolicyStats field).
_OPTIONAL = (
    ("fallbacks", "fallbacks"),
    ("timeouts", "timeouts"),
    ("abandoned", "abandoned"),
    ("short-circuited", "short_circuited"),
    ("rate-limited", "rate_limited"),
    ("bulkhead full", "bulkhead_rejected"),
    ("injected", "injected"),
    ("breaker", "breaker_state"),
)


def stats_table() -> Table:
    """The statistics of every policy as a ``rich.table.Table``.

    The columns of the fail-fast layers (fallbacks, timeouts, breaker, ...) appear only when
    some policy has a count (or a breaker) in them.
    """
    from rich.table import Table

    snapshot = stats()
    optional = [
        (header, field)
        for header, field in _OPTIONAL
        if any(getattr(s, field) for s in snapshot.values())
    ]
    table = Table(title="guardrails statistics", title_justify="left")
    table.add_column("policy", style="bold")
    for column in ("calls", "ok", "failed", "retries", "hits", "misses", "rejected"):
        table.add_column(column, justify="right")
    for header, _ in optional:
        table.add_column(header, justify="right")
    for column in ("p50 ms", "p95 ms", "p99 ms", "max Δrss"):
        table.add_column(column, justify="right")
    for name, s in snapshot.items():
        table.add_row(
            name,
            str(s.calls),
            str(s.successes),
            str(s.failures),
            str(s.retries),
            str(s.cache_hits),
            str(s.cache_misses),
            str(s.rejected),
            *(_cell(getattr(s, field)) for _, field in optional),
            _ms(s.p50_ms),
            _ms(s.p95_ms),
            _ms(s.p99_ms),
            _fmt_bytes(s.max_rss_growth_bytes) if s.max_rss_growth_bytes else "—",
        )
    return table


def _cell(value: int | str | None) -> str:
    if value is None:
        return "—"
    return value.replace("_", "-") if isinstance(value, str) else str(value)


def report(console: Console | None = None) -> None:
    """Print the statistics table to stdout, or to the given rich ``Console``."""
    if console is None:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            # Piped output has no width to measure; don't squeeze the table into 80 columns.
            console = Console(width=max(console.width, 240))
    console.print(stats_table())
