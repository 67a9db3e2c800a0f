"""Outbound webhooks: a queue in the replicated store, delivered by the master node."""
