"""Sending one notification to one channel: a signed JSON webhook, a Slack-compatible
incoming webhook, or an e-mail through Django's e-mail backend. Slow I/O, so it runs on
the control worker after the delivery was claimed, never inside a transaction and never
in the scheduling path.

A webhook request carries `X-Scheduler-Timestamp` (Unix seconds) and
`X-Scheduler-Signature: sha256=<hex>`, the HMAC-SHA256 under the channel's secret of
`<timestamp>.<body>`; `X-Scheduler-Delivery` is the delivery's id (the same on retries).
"""

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.mail import send_mail

from .models import AlertChannel, ChannelKind

TIMESTAMP_HEADER = "X-Scheduler-Timestamp"
SIGNATURE_HEADER = "X-Scheduler-Signature"
DELIVERY_HEADER = "X-Scheduler-Delivery"
# Cloud metadata services that are not link-local (those are refused as link-local).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200")
)


def signature(*, secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def webhook_target_refusal(url: str) -> str | None:
    """Why a webhook may not be sent to `url`, or None: a scheme other than http(s), a
    host that does not resolve, or one that resolves to a link-local or cloud metadata
    address (unless ALERT_WEBHOOK_ALLOW_LINK_LOCAL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Only http and https URLs with a host."
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return f"The host {parts.hostname} does not resolve."
    if settings.ALERT_WEBHOOK_ALLOW_LINK_LOCAL:
        return None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address.is_link_local or address in METADATA_ADDRESSES:
            return f"{parts.hostname} is a link-local or metadata address ({address})."
    return None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str = ""


def _post(channel: AlertChannel, body: bytes, headers: dict) -> Outcome:
    refusal = webhook_target_refusal(channel.target)
    if refusal:
        return Outcome(False, error=refusal)
    try:
        response = requests.post(
            channel.target,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=settings.ALERT_DELIVERY_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500])
    ok = 200 <= response.status_code < 300
    return Outcome(ok, response.status_code, "" if ok else f"HTTP {response.status_code}")


def text_of(payload: dict) -> str:
    kind = payload["kind"].upper()
    incident = payload.get("incident") or {}
    summary = incident.get("summary") or "a test notification"
    return f"[{kind}] {payload['rule']['name']}: {summary}"


def send(*, channel: AlertChannel, payload: dict, delivery_id: int) -> Outcome:
    if channel.kind == ChannelKind.EMAIL:
        try:
            send_mail(
                subject=f"[scheduler] {text_of(payload)}"[:200],
                message=f"{text_of(payload)}\n\n{json.dumps(payload, indent=2)}\n",
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=[channel.target],
            )
        except Exception as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500])
        return Outcome(True)
    if channel.kind == ChannelKind.SLACK:
        return _post(channel, json.dumps({"text": text_of(payload)}).encode(), {})
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret=channel.secret, timestamp=timestamp, body=body),
        DELIVERY_HEADER: str(delivery_id),
    }
    return _post(channel, body, headers)
