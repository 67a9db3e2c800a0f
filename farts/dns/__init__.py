"""Authoritative geo DNS: the zone from the config, A/AAAA of geo names answered with the
nearest live nodes of the member map, located with a MaxMind database index."""
from farts.dns.server import DNSServer

__all__ = ["DNSServer"]
