"""Reading a Prometheus text exposition in tests: one process's metrics port, one family's value."""

from __future__ import annotations

import httpx


def metrics_scrape(port: int) -> str:
    """``/metrics`` of a process serving on ``port`` (``METRICS_PORT``), or "" while it is not serving yet."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` carrying ``labels`` (0.0 when there is none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
