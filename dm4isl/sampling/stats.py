"""Running mean and standard deviation (Welford) of a stream of same-shape tensors, nothing of the stream stored."""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Delta degrees of freedom of the intra-process std over the window's x̂0(t): 1 (sample std), as the reference's
#: newest ``predict_FL`` (``torch.std`` of the stacked x̂0(t)); its earlier sample files used NumPy's 0.
INTRA_STD_DDOF = 1


class RunningStats:
    """Per-element running mean and standard deviation (``ddof`` 0: population, as ``numpy.std``; 1: sample).

    ``update`` takes tensors of one fixed shape (e.g. x̂0 ``(B, C, Z, Y, X)``); memory is two tensors of that shape.
    Accumulates in float64 for exactness over long chains.
    """

    def __init__(self, ddof: int = 0) -> None:
        if ddof not in (0, 1):
            raise ValueError(f"ddof={ddof}; expected 0 (population) or 1 (sample)")
        self.ddof = ddof
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add one tensor to the statistics."""
        x = x.detach().to(torch.float64)
        self.count += 1
        if self._mean is None:
            self._mean = x.clone()
            self._m2 = torch.zeros_like(x)
            return
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)

    def _check(self) -> None:
        if self.count == 0:
            raise ValueError("running statistics hold no values yet; expected at least one update")

    @property
    def mean(self) -> torch.Tensor:
        """Element-wise mean (float32) of everything passed to :meth:`update`."""
        self._check()
        return self._mean.to(torch.float32)

    @property
    def std(self) -> torch.Tensor:
        """Element-wise standard deviation with ``ddof`` (float32); 0 for a single value (no spread to estimate)."""
        self._check()
        return (self._m2 / max(self.count - self.ddof, 1)).clamp_min(0.0).sqrt().to(torch.float32)


class WindowStats:
    """Running x̂0(t) statistics of several timestep windows ``[t_low, t_high)`` of one reverse process at once.

    :meth:`update` adds the x̂0 ``(B, C, Z, Y, X)`` of a visited timestep to every window that contains it. The
    trajectory does not depend on the windows, so any number of them costs one reverse process
    (:func:`dm4isl.sampling.reverse.reverse_process` feeds one through its ``record`` argument). ``windows`` maps
    each ``(t_low, t_high)`` to its :class:`RunningStats` (``ddof`` as the sampler's intra-process std).
    """

    def __init__(self, windows: Sequence[Sequence[int]], ddof: int = INTRA_STD_DDOF) -> None:
        self.windows: dict[tuple[int, int], RunningStats] = {}
        for window in windows:
            low, high = (int(t) for t in window)
            if not 0 <= low < high:
                raise ValueError(f"x̂0 window [{low}, {high}); expected 0 ≤ t_low < t_high")
            self.windows[(low, high)] = RunningStats(ddof)

    def update(self, t: int, x0: torch.Tensor) -> None:
        """Add x̂0 of timestep ``t`` to the statistics of every window containing ``t``."""
        for (low, high), stats in self.windows.items():
            if low <= t < high:
                stats.update(x0)
