"""How a run's final metrics changed from the previous run's: what `run --watch` prints after each run."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    name: str
    old: float | None  # None: the previous run did not report it
    new: float | None  # None: this run no longer reports it

    @property
    def delta(self) -> float | None:
        return None if self.old is None or self.new is None else self.new - self.old


def changes(old: dict[str, float] | None, new: dict[str, float]) -> list[Change]:
    """One Change per metric of either run, sorted by name."""
    old = old or {}
    return [Change(name, old.get(name), new.get(name)) for name in sorted(set(old) | set(new))]


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def describe(change: Change, first: bool = False) -> str:
    """`validation:auc  0.912 -> 0.931  (+0.019)`; on the first run just the value."""
    if first:
        return f"{change.name}  {_value(change.new)}"
    delta = change.delta
    if delta is None:
        note = "new" if change.old is None else "gone"
    elif delta == 0 or (math.isfinite(delta) and abs(delta) < 1e-12):
        note = "unchanged"
    else:
        note = f"{delta:+.6g}"
    return f"{change.name}  {_value(change.old)} -> {_value(change.new)}  ({note})"


def lines(old: dict[str, float] | None, new: dict[str, float]) -> list[str]:
    """The lines to print for `new`, compared with `old` (None: there is no earlier completed run)."""
    return [describe(change, first=old is None) for change in changes(old, new) if old is not None or change.new is not None]
