"""The master: one node per deployment runs the crons and raises the alerts (lease.py)."""
