"""Live pub/sub: WebSocket and SSE subscribers, the publish API, history and resume."""
from .service import PublishError, PubSub

__all__ = ["PubSub", "PublishError"]
