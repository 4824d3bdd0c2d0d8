"""The loss-spike guard: skip an optimizer update whose loss or gradient norm is an outlier.

A long run meets batches that send the loss or the gradient norm far above their recent level; applying
such an update can knock the model off its course for thousands of steps. As OLMo-core does, the guard
keeps the last ``window`` finite values of each and calls a step a spike when a value exceeds the
window's mean by more than ``sigma`` standard deviations, once the window is full. A spike's update is
not applied (its batch is not seen again), but its values enter the window, so that a lasting change of
level (new data) stops counting as a spike after a few steps. The window starts empty again at each
stage, whose new batch size or mixture moves the loss. Its contents go into every checkpoint, so that a
resumed run skips exactly the steps the uninterrupted run skips.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any


class SpikeGuard:
    def __init__(self, window: int = 128, sigma: float = 6.0, enabled: bool = True) -> None:
        if window < 2:
            raise ValueError(f"The spike window must hold at least 2 steps, not {window}")
        self.window, self.sigma, self.enabled = window, sigma, enabled
        self.history: dict[str, deque[float]] = {"loss": deque(maxlen=window), "grad_norm": deque(maxlen=window)}

    def check(self, **values: float) -> str | None:
        """Why this step is a spike (``loss=..., grad_norm=...``), or None; then its finite values join
        the window. Every rank calls it with the same (all-reduced) values, so every rank decides alike."""
        verdict = None
        for name, value in values.items():
            history = self.history[name]
            if verdict is None and self.enabled and len(history) == self.window and math.isfinite(value):
                mean, std = statistics.fmean(history), statistics.pstdev(history)
                if value > mean + self.sigma * std:
                    sigmas = (value - mean) / std if std > 0 else math.inf
                    verdict = (
                        f"{name} {value:.4g} is {sigmas:.1f} standard deviations above the mean of the last "
                        f"{self.window} steps ({mean:.4g})"
                    )
            if math.isfinite(value):
                history.append(value)
        return verdict

    def reset(self) -> None:
        for history in self.history.values():
            history.clear()

    def state_dict(self) -> dict[str, Any]:
        return {name: list(history) for name, history in self.history.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, history in self.history.items():
            history.clear()
            history.extend(state[name])
