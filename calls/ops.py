"""Operator endpoints: liveness, readiness and Prometheus metrics of this process."""

from __future__ import annotations

import ipaddress
import logging
import secrets

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from calls.auth.throttle import forwarded_client_address
from calls.presence import get_presence

logger = logging.getLogger("calls")

READINESS_PROBE_GROUP = "calls.readiness-probe"


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The process answers HTTP: nothing more is checked."""
    return JsonResponse({"status": "ok"})


@require_GET
async def readyz(request: HttpRequest) -> HttpResponse:
    """The process can serve calls: database, channel layer and presence reachable."""
    checks: dict[str, str] = {}
    for name, check in (("database", _check_database), ("channelLayer", _check_layer), ("presence", _check_presence)):
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            logger.warning("readiness check %s failed: %s", name, exc)
            checks[name] = "unavailable"
    ready = all(state == "ok" for state in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@sync_to_async(thread_sensitive=True)
def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check_layer() -> None:
    layer = get_channel_layer()
    # A message to a group nobody is in: it reaches the backend and is stored nowhere. (A
    # channel nobody reads would keep each probe for a minute, and refuse the 101st.)
    await layer.group_send(READINESS_PROBE_GROUP, {"type": "probe"})


async def _check_presence() -> None:
    await get_presence().ping()


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, for allowed addresses or a bearer of ``CALLS_METRICS_TOKEN``."""
    if not _may_scrape(request):
        return HttpResponse(status=403)
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def _may_scrape(request: HttpRequest) -> bool:
    token = settings.CALLS_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and secrets.compare_digest(header[7:].strip(), token):
        return True
    peer = request.META.get("REMOTE_ADDR", "")
    forwarded_for = request.headers.get("X-Forwarded-For")
    if forwarded_for and peer not in settings.CALLS_TRUSTED_PROXIES:
        # Forwarded by a proxy we were not told about (say nginx on this host): the
        # loopback peer says nothing of who is asking.
        return False
    try:
        client = ipaddress.ip_address(forwarded_client_address(peer, forwarded_for))
    except ValueError:
        return False
    return any(client in network for network in _allowed_networks())


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(allowed, strict=False) for allowed in settings.CALLS_METRICS_ALLOWED_IPS]
