"""The HTTP/WebSocket service, its CLI and static pages."""
