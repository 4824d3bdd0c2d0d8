"""What preparation leaves out, counted by reason, with the first few places for each reason."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES = 5


@dataclass
class Skips:
    """Documents and files skipped, by reason (``malformed JSON``, ``empty document``, ...), each with
    the first ``MAX_EXAMPLES`` places (``path:line`` or ``path row N``) to look at."""

    counts: dict[str, int] = field(default_factory=dict)  # a plain dict: the manifest stores it as JSON
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        places = self.examples.setdefault(reason, [])
        if len(places) < MAX_EXAMPLES:
            places.append(where)

    def update(self, other: Skips) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            places = self.examples.setdefault(reason, [])
            places.extend(other.examples.get(reason, [])[: MAX_EXAMPLES - len(places)])
