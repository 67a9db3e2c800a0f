"""Verified releases: signed bundles (bundle.py), restart onto a new process without
dropping work (handover.py) and the rolling deploy (rollout.py)."""
