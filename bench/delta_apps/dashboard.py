"""The dashboard stream of bench/delta.py: a ~5 KB JSON state of 100 metric values of which 2
(2 %) change per tick, with the tick number. Deterministic (a seeded generator), so the server
and the load make the same states."""

from __future__ import annotations

import random
from typing import Any

CHANNEL = "dash:main"
METRICS = 100
CHANGED_PER_TICK = 2  # 2 % of the values


def states(ticks: int, seed: int = 24) -> list[dict[str, Any]]:
    """States 0 .. ticks (tick 0 is the starting one); each changes CHANGED_PER_TICK values."""
    rng = random.Random(seed)
    metrics = {
        f"metric-{i:03}": {
            "value": round(rng.uniform(0, 1000), 2),
            "unit": rng.choice(("ms", "req/s", "%", "MB")),
            "status": "ok",
        }
        for i in range(METRICS)
    }
    out = [_snapshot(metrics, 0)]
    for tick in range(1, ticks + 1):
        for name in rng.sample(sorted(metrics), CHANGED_PER_TICK):
            metrics[name]["value"] = round(rng.uniform(0, 1000), 2)
        out.append(_snapshot(metrics, tick))
    return out


def _snapshot(metrics: dict[str, dict[str, Any]], tick: int) -> dict[str, Any]:
    copied = {name: dict(fields) for name, fields in metrics.items()}
    return {"title": "Fleet overview", "tick": tick, "metrics": copied}
