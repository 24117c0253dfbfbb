"""Template helpers of the web UI: times shown relative with the exact time on hover,
and any JSON-shaped answer (such as the why answer) rendered as nested lists, so new
keys show without a template change."""

import shlex
from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince, timeuntil

register = template.Library()

DASH = "\u2013"  # shown where there is no value


@register.simple_tag
def reltime(moment: datetime | None, empty: str = DASH):
    """`3 minutes ago` (or `in 2 hours`), with the exact UTC time as its title."""
    if moment is None:
        return empty
    now = timezone.now()
    seconds = (now - moment).total_seconds()
    if 0 <= seconds < 60:
        words = f"{int(seconds)} s ago"
    elif seconds >= 0:
        words = f"{timesince(moment, now)} ago"
    else:
        words = f"in {timeuntil(moment, now)}"
    exact = moment.astimezone(UTC)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.isoformat(),
        exact.strftime("%Y-%m-%d %H:%M:%S UTC"),
        words,
    )


@register.filter
def cores(millis: int | None) -> str:
    """Thousandths of a core as cores: 1500 -> 1.5."""
    return DASH if millis is None else f"{millis / 1000:g}"


@register.filter
def argv(command: list[str]) -> str:
    """An argv list as a shell would need it typed."""
    return shlex.join(command)


def _label(key: str) -> str:
    return str(key).replace("_", " ")


@register.simple_tag
def data_view(value):
    """Any JSON-shaped value as HTML: dicts as definition lists, lists as lists."""
    if isinstance(value, dict):
        return format_html(
            '<dl class="data">{}</dl>',
            format_html_join(
                "", "<dt>{}</dt><dd>{}</dd>", ((_label(k), data_view(v)) for k, v in value.items())
            ),
        )
    if isinstance(value, list):
        if not value:
            return format_html('<span class="muted">{}</span>', "none")
        return format_html(
            '<ul class="data">{}</ul>',
            format_html_join("", "<li>{}</li>", ((data_view(v),) for v in value)),
        )
    if value is None:
        return format_html('<span class="muted">{}</span>', DASH)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return reltime(value)
    return format_html("{}", value)
