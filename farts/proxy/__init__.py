"""Reverse proxy to the application servers (``[upstreams.NAME]`` groups)."""
from .handler import ProxyHandler

__all__ = ["ProxyHandler"]
