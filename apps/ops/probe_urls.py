"""Probe endpoints served at the root: /healthz, /readyz, /metrics."""

urlpatterns: list = []
