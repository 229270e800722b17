"""Weighted deficit round robin over the users with pending work (Shreedhar and Varghese, 1995).

The users form a ring in the order they started waiting. Each time the ring's pointer arrives at a
user, the user is granted ``quantum * weight`` of budget (its deficit); the dispatcher then takes that
user's tasks, each charged its estimated run time (its cost), while the deficit covers the next one,
and moves on when it does not. A user whose queue empties leaves the ring and loses its deficit, so
nobody banks credit while idle; a newcomer joins at the tail. Over any busy period each user is served
run time in proportion to its weight, within one task's cost per round.

Users that cannot take work now (at quota, at ``max_containers``, or nothing fits) are passed over
without a grant, so the pool goes to whoever can use it (work-conserving), and their deficit stays
capped so they cannot save up a burst.

This class is pure bookkeeping; :mod:`.dispatcher` drives it with the atomic take step.
"""

from __future__ import annotations

from collections.abc import Iterable


class DeficitRoundRobin:
    def __init__(self, quantum: int) -> None:
        self.quantum = quantum
        self.ring: list[int] = []
        self.deficit: dict[int, int] = {}
        self.pos = 0
        self.granted = False  # whether the user at the pointer has had its grant for this visit

    def sync(self, users: Iterable[int]) -> None:
        """Make the ring the users with pending work: newcomers join at the tail, leavers drop out."""
        wanted = set(users)
        if set(self.ring) == wanted:
            return
        current = self.ring[self.pos] if self.ring else None
        # The pointer stays on the current user, or moves to the next one that is still there.
        after = self.ring[self.pos :] + self.ring[: self.pos]
        kept = [u for u in self.ring if u in wanted]
        kept += sorted(wanted - set(kept))
        for u in set(self.deficit) - wanted:
            del self.deficit[u]
        self.ring = kept
        if not kept:
            self.pos, self.granted = 0, False
            return
        survivor = next((u for u in after if u in wanted), kept[0])
        if survivor != current:
            self.granted = False
        self.pos = kept.index(survivor)

    def current(self) -> int | None:
        return self.ring[self.pos] if self.ring else None

    def arrive(self, weight: int) -> int:
        """Grant the user at the pointer its quantum once per visit; return its deficit."""
        user = self.ring[self.pos]
        if not self.granted:
            self.deficit[user] = self.deficit.get(user, 0) + self.quantum * max(1, weight)
            self.granted = True
        return self.deficit.get(user, 0)

    def charge(self, user: int, cost: int) -> None:
        self.deficit[user] = self.deficit.get(user, 0) - cost

    def refund(self, user: int, cost: int) -> None:
        self.deficit[user] = self.deficit.get(user, 0) + cost

    def cap(self, user: int, most: int) -> None:
        """Keep a user that cannot be served now from saving up more than ``most``."""
        if self.deficit.get(user, 0) > most:
            self.deficit[user] = most

    def advance(self) -> None:
        if self.ring:
            self.pos = (self.pos + 1) % len(self.ring)
        self.granted = False

    def remove(self, user: int) -> None:
        """The user's queue is empty: it leaves the ring and its deficit is reset (classic DRR)."""
        if user not in self.ring:
            return
        i = self.ring.index(user)
        self.ring.pop(i)
        self.deficit.pop(user, None)
        if i < self.pos:
            self.pos -= 1
        elif i == self.pos:
            self.granted = False
        if self.pos >= len(self.ring):
            self.pos = 0

    def state(self) -> dict[str, object]:
        return {"ring": list(self.ring), "pos": self.pos, "deficit": {str(u): d for u, d in self.deficit.items()}}

    def restore(self, state: dict[str, object]) -> None:
        """Continue from a previous leader's state (a failover keeps fairness history)."""
        ring = [int(u) for u in state.get("ring", [])]  # type: ignore[attr-defined]  # JSON: a list of ids
        self.ring = ring
        self.pos = int(state.get("pos", 0)) % len(ring) if ring else 0  # type: ignore[call-overload]  # an int
        self.deficit = {int(u): int(d) for u, d in dict(state.get("deficit", {})).items()}  # type: ignore[call-overload]
        self.granted = False


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index of ``values`` (e.g. weight-normalised shares): 1.0 is perfectly even, 1/n worst."""
    xs = list(values)
    if not xs or not any(xs):
        return 1.0
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
