"""Reverse proxy to the application servers (``[upstreams.NAME]`` groups)."""
from .handler import ProxyHandler, ProxyStats

__all__ = ["ProxyHandler", "ProxyStats"]
