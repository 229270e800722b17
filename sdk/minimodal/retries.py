"""``Retries``: how a failed input is tried again, as Modal has it.

Example::

    @app.function(retries=minimodal.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=1.0))
    def flaky(): ...

``retries=N`` means N retries with a fixed 1 s delay. The delay before retry ``k`` (1-based) is
``initial_delay * backoff_coefficient ** (k - 1)``, capped at ``max_delay``, less up to 10 % of jitter
(so delays still grow). An input whose attempts all fail ends ``dead_letter`` with a record in the
dead-letter queue; the caller gets the last attempt's error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .exception import InvalidError

JITTER = 0.1  # a delay is drawn from [delay * (1 - JITTER), delay]


@dataclass(frozen=True)
class Retries:
    max_retries: int
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 10:
            raise InvalidError(f"Retries(max_retries={self.max_retries!r}): give a whole number from 0 to 10")
        if not 1.0 <= self.backoff_coefficient <= 10.0:
            raise InvalidError(f"Retries(backoff_coefficient={self.backoff_coefficient!r}): give 1.0 to 10.0")
        if not 0.0 <= self.initial_delay <= 60.0:
            raise InvalidError(f"Retries(initial_delay={self.initial_delay!r}): give 0 to 60 seconds")
        if not 1.0 <= self.max_delay <= 60.0:
            raise InvalidError(f"Retries(max_delay={self.max_delay!r}): give 1 to 60 seconds")

    @classmethod
    def of(cls, value: Any) -> Retries | None:
        """``retries=`` as given to the decorator: None, a number of retries, or a Retries."""
        if value is None:
            return None
        if isinstance(value, Retries):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_retries=value, backoff_coefficient=1.0, initial_delay=1.0)
        raise InvalidError(f"retries={value!r}: give a number of retries or minimodal.Retries(...)")

    def to_json(self) -> dict[str, float]:
        return {
            "max_retries": self.max_retries,
            "backoff_coefficient": self.backoff_coefficient,
            "initial_delay": self.initial_delay,
            "max_delay": self.max_delay,
        }

    @staticmethod
    def delay(policy: dict[str, float], retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) of ``policy`` (the JSON form)."""
        base = policy["initial_delay"] * policy["backoff_coefficient"] ** (retry - 1)
        capped = min(base, policy["max_delay"])
        return capped * (1 - JITTER * (rng or random).random())
