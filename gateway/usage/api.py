"""``GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD&key=ID``: usage summed per UTC day, and the admin usage page.

A key sees only its own usage (``key`` may name only itself); admin sees any key's, or every key's together
when ``key`` is left out. Without ``from``/``to``: the last 30 days up to today.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api_common import require_store
from gateway.auth import scoped
from gateway.principal import principal_of
from gateway.usage.store import COUNTS, MAX_DAYS, per_day

DEFAULT_DAYS = 30
PAGE = Path(__file__).resolve().parents[1] / "static" / "usage.html"


def _day(raw: str | None, name: str, default: date) -> date:
    if raw is None or raw == "":
        return default
    try:
        if len(raw) != 10:
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise HTTPException(422, f"{name} must be a date as YYYY-MM-DD (got {raw[:40]!r})") from None


async def get_usage(request: Request) -> Response:
    principal = principal_of(request)
    today = datetime.now(UTC).date()
    last = _day(request.query_params.get("to"), "to", today)
    first = _day(request.query_params.get("from"), "from", last - timedelta(days=DEFAULT_DAYS - 1))
    if first > last:
        raise HTTPException(422, "from must not be after to")
    if (last - first).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"at most {MAX_DAYS} days at once")
    key = request.query_params.get("key") or None
    if not principal.admin:
        if key is not None and key != principal.key_id:
            raise HTTPException(403, "a key may read only its own usage")
        key = principal.key_id
    days = await per_day(require_store(request).engine, first, last, key)
    totals = {name: round(sum(d[name] for d in days), 3) for name in COUNTS}
    body = {
        "object": "usage",
        "from": first.isoformat(),
        "to": last.isoformat(),
        "key": key,
        "data": days,
        "totals": totals,
    }
    return JSONResponse(body)


async def usage_page(request: Request) -> Response:
    return FileResponse(PAGE)


routes: list[BaseRoute] = [scoped(Route("/v1/usage", get_usage), "key")]
pages: list[BaseRoute] = [scoped(Route("/usage", usage_page), "public")]
