"""The admin listener of ``loadbalancer serve``: ``/metrics`` for Prometheus and a status page.

A deliberately tiny HTTP/1.1 server on asyncio streams, on its own address (keep it off the
public one): one request per connection, ``GET`` or ``HEAD`` only, heads up to 8 KiB read
within 5 s. ``/metrics`` is the Prometheus text format from one ``LoadBalancerCollector`` over
every pool (``balancer="<pool>"``); ``/status`` an HTML page and ``/status.json`` the same
figures from ``lb.stats()``: per pool its size, healthy, eligible, panic and ejections, and per
server its weight, health, eligibility, requests in flight, ejections and the seconds left of
an ejection.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .. import LoadBalancer
from ..metrics.prometheus import LoadBalancerCollector

__all__ = ["AdminServer", "status_document"]

_MAX_HEAD = 8192
_HEAD_TIMEOUT = 5.0


def _number(value: float | None) -> float | None:
    """A JSON-safe reading: None for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


def status_document(
    balancers: Mapping[str, LoadBalancer],
    health: Callable[[str], Mapping[str, Any]] = lambda pool: {},
) -> dict[str, Any]:
    """The ``/status.json`` document: every pool's figures and its servers', from ``stats()``.

    ``health(pool)`` gives the active checker's status of each server (its last failure).
    """
    pools: dict[str, Any] = {}
    for name, lb in balancers.items():
        stats = lb.stats()
        checks = health(name)
        servers = []
        for server, s in stats.items():
            check = checks.get(server)
            servers.append(
                {
                    "server": server,
                    "weight": s.weight,
                    "effective_weight": _number(s.effective_weight),
                    "healthy": s.healthy,
                    "ejected": s.ejected_until is not None,
                    "eligible": s.eligible,
                    "in_flight": s.in_flight,
                    "requests": s.picks,
                    "successes": s.successes,
                    "failures": s.failures,
                    "cancelled": s.cancelled,
                    "consecutive_failures": s.consecutive_failures,
                    "latency_ewma": _number(s.latency_ewma),
                    "ejections": s.ejections,
                    "ejections_total": s.ejections_total,
                    "ejection_ends_in": _number(s.ejection_ends_in),
                    "last_check_failure": None if check is None else check.last_failure,
                }
            )
        budget = stats.retry_budget
        pools[name] = {
            "strategy": type(lb.strategy).__name__,
            "size": stats.size,
            "healthy": stats.healthy,
            "eligible": stats.eligible,
            "panic": stats.panic,
            "ejections_active": stats.ejections_active,
            "ejections_total": dict(stats.ejections_total),
            "membership_changes": stats.membership_changes,
            "retries": budget.retries,
            "retries_refused": budget.rejected,
            "hedges": budget.hedges,
            "discovery": [
                {
                    "source": d.source,
                    "running": d.running,
                    "servers": d.servers,
                    "updates": d.updates,
                    "refused": d.refused,
                    "failures_in_a_row": d.failures,
                    "last_update_age": _number(d.last_update_age),
                    "last_error": d.last_error,
                }
                for d in stats.discovery
            ],
            "servers": servers,
        }
    return {"time": time.time(), "pools": pools}


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#eee}"
    "td:first-child{text-align:left}.bad{background:#fdd}.off{color:#999}"
)


def _status_html(document: Mapping[str, Any]) -> str:
    """The status page: one table per pool."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>loadbalancer serve</title>",
        f"<style>{_STYLE}</style></head><body><h1>loadbalancer serve</h1>",
    ]
    columns = (
        "server",
        "weight",
        "healthy",
        "eligible",
        "in flight",
        "requests",
        "failures",
        "ejections",
        "ejection ends in (s)",
        "last check failure",
    )
    for name, pool in document["pools"].items():
        panic = " <strong>PANIC</strong>" if pool["panic"] else ""
        parts.append(
            f"<h2>{e(name)}</h2><p>{e(pool['strategy'])}: {pool['size']} servers, "
            f"{pool['healthy']} healthy, {pool['eligible']} eligible, "
            f"{pool['ejections_active']} ejected{panic}; retries {pool['retries']} "
            f"(refused {pool['retries_refused']}), hedges {pool['hedges']}</p>"
        )
        parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
        for s in pool["servers"]:
            css = "" if s["eligible"] else " class='bad'" if s["healthy"] else " class='off'"
            ends = "" if s["ejection_ends_in"] is None else f"{s['ejection_ends_in']:.1f}"
            cells = (
                s["server"],
                f"{s['weight']:g}",
                "yes" if s["healthy"] else "no",
                "yes" if s["eligible"] else "no",
                s["in_flight"],
                s["requests"],
                s["failures"],
                s["ejections_total"],
                ends,
                s["last_check_failure"] or "",
            )
            parts.append(f"<tr{css}>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


@final
class AdminServer:
    """The admin listener over named balancers; ``set_pools`` follows a reload.

    ``await start(host, port)``, then ``.port``; ``await close()``. The collector's latency
    histograms are enabled on every balancer it is given (``LoadBalancerCollector``'s default).
    """

    __slots__ = ("_balancers", "_collector", "_health", "_registry", "_server")

    def __init__(
        self,
        balancers: Mapping[str, LoadBalancer] | None = None,
        *,
        health: Callable[[str], Mapping[str, Any]] = lambda pool: {},
    ) -> None:
        self._collector = LoadBalancerCollector()
        self._registry = CollectorRegistry()
        self._registry.register(self._collector)
        self._balancers: dict[str, LoadBalancer] = {}
        self._health = health
        self._server: asyncio.Server | None = None
        self.update(balancers or {}, {})

    @property
    def registry(self) -> CollectorRegistry:
        """The registry ``/metrics`` serves."""
        return self._registry

    def update(
        self, added: Mapping[str, LoadBalancer], removed: Mapping[str, LoadBalancer]
    ) -> None:
        """Stop showing the ``removed`` pools, then show the ``added`` ones (a reload's change)."""
        for name in removed:
            self._collector.remove(name)
            self._balancers.pop(name, None)
        for name, lb in added.items():
            self._collector.remove(name)
            self._collector.add(name, lb)
            self._balancers[name] = lb

    @property
    def balancers(self) -> dict[str, LoadBalancer]:
        """The balancers shown, by pool name."""
        return dict(self._balancers)

    @property
    def port(self) -> int:
        """The port listened on (after ``start``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the admin listener is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port`` (0: any free port)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, reuse_port=reuse_port or None
        )

    async def close(self) -> None:
        """Stop listening; requests being answered are cut."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """The status, content type and body for ``method target``."""
        path = target.partition("?")[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path in ("/status.json", "/status", "/"):
            document = status_document(self._balancers, self._health)
            if path == "/status.json":
                body = json.dumps(document, indent=1).encode() + b"\n"
                return 200, "application/json", body
            return 200, "text/html; charset=utf-8", _status_html(document).encode()
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /status, /status.json\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_HEAD:
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, kind, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                try:
                    status, kind, body = self.respond(method, parts[1])
                except Exception as error:  # a stats() that fails must not kill the listener
                    status, kind = 500, "text/plain; charset=utf-8"
                    body = f"{type(error).__name__}: {error}\n".encode()
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
            writer.write(
                f"HTTP/1.1 {status} {reason.get(status, 'Internal Server Error')}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
