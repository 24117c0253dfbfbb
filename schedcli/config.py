"""Where `sched` finds its server and token: the environment (SCHED_URL, SCHED_TOKEN) over
a profile stored by `sched login` in $XDG_CONFIG_HOME/sched/config.json (default
~/.config), a file only its owner may read (mode 0600)."""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import NotConfigured

DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class Server:
    url: str
    token: str


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sched" / "config.json"


def read_config() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"profiles": {}}
    except (OSError, ValueError) as error:
        raise NotConfigured(f"cannot read {path}: {error}") from None
    data.setdefault("profiles", {})
    return data


def write_config(data: dict) -> Path:
    """Replaces the file at once, created 0600 (never readable by others, even briefly)."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".config-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def profile_store(*, name: str, url: str, token: str, username: str) -> Path:
    data = read_config()
    data["profiles"][name] = {"url": url, "token": token, "username": username}
    return write_config(data)


def profile_remove(*, name: str) -> dict | None:
    data = read_config()
    profile = data["profiles"].pop(name, None)
    if profile is not None:
        write_config(data)
    return profile


def server_for(profile: str | None) -> Server:
    """The URL and token to use: SCHED_URL and SCHED_TOKEN win over the stored profile."""
    name = profile or os.environ.get("SCHED_PROFILE") or DEFAULT_PROFILE
    stored = read_config()["profiles"].get(name, {})
    url = os.environ.get("SCHED_URL") or stored.get("url")
    token = os.environ.get("SCHED_TOKEN") or stored.get("token")
    if not url or not token:
        raise NotConfigured(
            f"no server for profile {name!r}: run `sched login`, or set SCHED_URL and SCHED_TOKEN"
        )
    return Server(url=url.rstrip("/"), token=token)
