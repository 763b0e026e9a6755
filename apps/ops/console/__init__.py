"""The operator console (Django admin, staff): the fleet over time, dead letters by fingerprint,
model versions side by side, job runs with progress, and the scaling advice with its arithmetic."""
