"""The CDN service: an edge cache of media on an on-disk LRU that survives restarts."""
from .origin import make_origin
from .purge import PurgeHandler
from .service import CDN, CDNHandler

__all__ = ["CDN", "CDNHandler", "PurgeHandler", "make_origin"]
