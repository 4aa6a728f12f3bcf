"""A mean over images with its 95 % confidence interval (Student's t), as the summaries report it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the 95 % t-interval around it (``low`` = ``high`` = mean when n = 1)."""

    mean: float
    low: float
    high: float
    n: int


def mean_interval(values: list[float], confidence: float = 0.95) -> Interval | None:
    """The mean and t-interval of the values (None for none): ``mean +- t * sd / sqrt(n)``."""
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return None
    mean = sum(vals) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)
