"""The mesh: mutual-TLS links, SWIM membership, and the message bus (see service.py)."""
from farts.mesh.bus import Bus, BusMessage
from farts.mesh.service import DrainHandler, MeshService, MeshStatusHandler

__all__ = ["Bus", "BusMessage", "DrainHandler", "MeshService", "MeshStatusHandler"]
