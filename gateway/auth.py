"""Optional API-key check for HTTP routes and WebSocket upgrades."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection


class Auth:
    """When ``api_key`` is set, callers send ``Authorization: Bearer KEY`` or ``?api_key=KEY``."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key

    def _allows(self, conn: HTTPConnection) -> bool:
        if not self.api_key:
            return True
        header = conn.headers.get("authorization", "")
        offered = header[7:] if header.lower().startswith("bearer ") else conn.query_params.get("api_key", "")
        return hmac.compare_digest(offered.encode(), self.api_key.encode())

    def allows_request(self, conn: HTTPConnection) -> bool:
        return self._allows(conn)

    def allows_websocket(self, conn: HTTPConnection) -> bool:
        return self._allows(conn)
