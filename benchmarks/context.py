"""What every measurement receives: the profile, the configurations found, the timing settings."""

from __future__ import annotations

from dataclasses import dataclass

from .heaps import Discovery
from .results import Profile
from .timing import Clock, Settings

__all__ = ["Context"]


@dataclass(frozen=True)
class Context:
    """The run's parameters, shared by every measurement."""

    profile: Profile
    discovery: Discovery
    clock: Clock = "wall"

    def settings(self, rounds: int | None = None) -> Settings:
        """Timing settings from the profile, with ``rounds`` overriding its round count."""
        return Settings(
            rounds=rounds or self.profile.rounds,
            batch_ns=self.profile.batch_ns,
            min_rounds=min(3, rounds or self.profile.rounds),
            budget_ns=self.profile.budget_ns,
            clock=self.clock,
        )
