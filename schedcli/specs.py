"""`sched submit`'s options as the API's job fields. Each parser raises
click.BadParameter, so a malformed option is a usage error (exit 2) naming it."""

import contextlib
import json
import re
from decimal import Decimal, InvalidOperation

import click

# --after JOB:ok|notok|any|start, as sbatch's afterok/afternotok/afterany/after; the API's
# own words are accepted too.
AFTER_CONDITIONS = {
    "ok": "succeeded",
    "notok": "failed",
    "any": "finished",
    "start": "started",
    "succeeded": "succeeded",
    "failed": "failed",
    "finished": "finished",
    "started": "started",
}
MEMORY_UNITS = {"": 1, "M": 1, "MB": 1, "G": 1024, "GB": 1024, "T": 1024 * 1024, "TB": 1024 * 1024}
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def key_values(pairs: tuple[str, ...], option: str, *, typed: bool = False) -> dict:
    """K=V pairs as a dict; with `typed`, a value that reads as JSON (5, true, [1]) is
    that value, any other a string."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        if typed:
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        result[key] = value
    return result


def cpus(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(
            f"{text!r} is not a number of cores", param_hint="--cpus"
        ) from None
    return str(value)


def memory_mb(text: str) -> int:
    """512, 512M, 2G, 1.5G as megabytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text.strip())
    unit = match and match.group(2).upper()
    if not match or unit not in MEMORY_UNITS:
        raise click.BadParameter(f"{text!r}: use e.g. 512, 512M or 2G", param_hint="--mem")
    return int(Decimal(match.group(1)) * MEMORY_UNITS[unit])


def seconds(text: str, option: str) -> int:
    """90, 90s, 10m, 2h, 1d as seconds."""
    match = re.fullmatch(r"(\d+)\s*([smhd]?)", text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use e.g. 90, 10m, 2h or 1d", param_hint=option)
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def dependencies(values: tuple[str, ...]) -> list[dict]:
    """--after 12 --after 13:any, or --after 12,13:notok."""
    result = []
    for value in values:
        for item in value.split(","):
            job, sep, condition = item.partition(":")
            if not job.isdecimal() or (sep and condition not in AFTER_CONDITIONS):
                raise click.BadParameter(
                    f"{item!r}: use JOB[:ok|notok|any|start]", param_hint="--after"
                )
            result.append({"job": int(job), "on": AFTER_CONDITIONS[condition or "ok"]})
    return result


def array(text: str) -> dict:
    """0-99%10: 100 tasks (JOB_ARRAY_INDEX 0 to 99), at most 10 at once."""
    match = re.fullmatch(r"0-(\d+)(?:%(\d+))?", text.strip())
    if not match:
        raise click.BadParameter(
            f"{text!r}: use 0-N or 0-N%P (task indexes start at 0)", param_hint="--array"
        )
    spec = {"count": int(match.group(1)) + 1}
    if match.group(2):
        spec["parallelism"] = int(match.group(2))
    return spec
