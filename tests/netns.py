"""Hosts of their own for node agents: a network namespace per node, joined to the host
by a veth pair, so a test can cut, half-cut or degrade one node's network while the
control plane (PostgreSQL, the web API, the scheduler) stays on the host.

Node i's link is 10.213.X.0/30 with X = a base from this process's id plus i: the host
end is .1, the node's end .2. The node reaches only what listens on its host address:
the test's own broker (`LinkBroker`, bound to every host address) and the web API
(gunicorn bound to them too). Partitions are netfilter rules inside the node's
namespace, on its end of the link, both ways:

- `cut`: nothing passes (a pulled cable, a dead switch port);
- `cut_port`: only one service's port is dropped (the API, or the broker);
- `lose`: a share of the node's outgoing packets is dropped at random.

Delay: this machine's kernel is built without netem (`tc qdisc ... netem` answers
"Specified qdisc kind is unknown"), so `LinkDelay` relays a node's TCP streams on the
host end of its link, holding each chunk for the delay in each direction.

Everything the rig makes is named `schedpt-<pid>-...` (namespaces) or `spt<pid>h<i>`
(host ends of the links). Namespaces and links of processes that are gone are swept
first, and a rig removes its own when it is closed, whatever the test did.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.processes import BASE_DIR, wait_until

PREFIX = "schedpt"
HOST_IF_PREFIX = "spt"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run the rig, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 iptables)"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        rules = run("ip", "netns", "exec", probe, "iptables", "-w", "-S", check=False)
        if rules.returncode != 0:
            return f"iptables does not work in a namespace: {rules.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def sweep_leftovers() -> None:
    """Remove the namespaces and links of rigs whose process is gone (a test run that was
    killed before it could clean up)."""
    for line in run("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        ours = len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit()
        if ours and not _pid_alive(int(parts[1])):
            run("ip", "netns", "del", name, check=False)
    for line in run("ip", "-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(HOST_IF_PREFIX) and "h" in name[len(HOST_IF_PREFIX) :]:
            pid = name[len(HOST_IF_PREFIX) :].split("h")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                run("ip", "link", "del", name, check=False)


@dataclass(frozen=True)
class Link:
    """One node's link: its namespace, the host end's interface and both addresses."""

    index: int
    netns: str
    host_if: str
    node_if: str
    host_address: str
    node_address: str

    def netns_argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside the node's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def iptables(self, *rule: str) -> None:
        run(*self.netns_argv(["iptables", "-w", *rule]))

    def cut(self) -> None:
        """Nothing passes the link, either way."""
        self.iptables("-A", "OUTPUT", "-o", self.node_if, "-j", "DROP")
        self.iptables("-A", "INPUT", "-i", self.node_if, "-j", "DROP")

    def cut_port(self, port: int) -> None:
        """The node's traffic with one host service (`port`) is dropped, either way."""
        self.iptables(
            "-A", "OUTPUT", "-o", self.node_if, "-p", "tcp", "--dport", str(port), "-j", "DROP"
        )
        self.iptables(
            "-A", "INPUT", "-i", self.node_if, "-p", "tcp", "--sport", str(port), "-j", "DROP"
        )

    def lose(self, share: float) -> None:
        """Drop `share` (0 to 1) of the node's outgoing packets, at random."""
        self.iptables(
            "-A",
            "OUTPUT",
            "-o",
            self.node_if,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            str(share),
            "-j",
            "DROP",
        )

    def heal(self) -> None:
        """Every rule gone: the link is whole again."""
        self.iptables("-F", "INPUT")
        self.iptables("-F", "OUTPUT")

    def answers(self, port: int) -> bool:
        """Something on the host end of the link accepts a connection on `port`, seen
        from inside the node's namespace."""
        probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
        result = subprocess.run(
            self.netns_argv([sys.executable, "-c", probe, self.host_address, str(port)]),
            capture_output=True,
            check=False,
            timeout=30,
        )
        return result.returncode == 0


class NetnsRig:
    """`count` node links, made at once and removed by `close`."""

    def __init__(self, count: int):
        pid = os.getpid()
        base = (pid % 60) * 4
        self.links: list[Link] = []
        try:
            for i in range(count):
                link = Link(
                    index=i,
                    netns=f"{PREFIX}-{pid}-{i}",
                    host_if=f"{HOST_IF_PREFIX}{pid}h{i}",
                    node_if="eth0",
                    host_address=f"10.213.{base + i}.1",
                    node_address=f"10.213.{base + i}.2",
                )
                self.links.append(link)
                self._make(link)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _make(link: Link) -> None:
        run("ip", "netns", "add", link.netns)
        run("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", f"{link.host_if}n")
        run("ip", "link", "set", f"{link.host_if}n", "netns", link.netns)
        inside = link.netns_argv
        run(*inside(["ip", "link", "set", f"{link.host_if}n", "name", link.node_if]))
        run(*inside(["ip", "addr", "add", f"{link.node_address}/30", "dev", link.node_if]))
        run(*inside(["ip", "link", "set", link.node_if, "up"]))
        run(*inside(["ip", "link", "set", "lo", "up"]))
        run("ip", "addr", "add", f"{link.host_address}/30", "dev", link.host_if)
        run("ip", "link", "set", link.host_if, "up")

    @property
    def host_addresses(self) -> list[str]:
        return [link.host_address for link in self.links]

    def heal_all(self) -> None:
        for link in self.links:
            link.heal()

    def close(self) -> None:
        """Remove every namespace and link this rig made (deleting a namespace deletes
        its end of the pair, and with it the host end)."""
        for link in self.links:
            run("ip", "netns", "del", link.netns, check=False)
            run("ip", "link", "del", link.host_if, check=False)


def free_port_on(addresses: list[str]) -> int:
    """A TCP port free on 127.0.0.1 and on each of `addresses`."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port


class LinkBroker:
    """A Redis of the test's own, bound to 127.0.0.1 and to the host end of each link,
    so the node agents reach it only through their link. Nothing is kept on disk."""

    def __init__(self, addresses: list[str], log_path: Path):
        self.port = free_port_on(addresses)
        log = log_path.open("ab")
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                *addresses,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                # Reached from the nodes' namespaces, with no password: it listens on
                # loopback and the links' host ends only.
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_until(self._answers, 10, interval=0.1, message="the links' Redis")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def url(self, address: str = "127.0.0.1", db: int = 0) -> str:
        return f"redis://{address}:{self.port}/{db}"

    def flush(self) -> None:
        run("redis-cli", "-p", str(self.port), "flushall")

    def close(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


class LinkDelay:
    """Relays from the host end of a link to a host service, holding each chunk of each
    stream `delay` seconds in each direction (tests/link_delay.py)."""

    def __init__(self, *, listen: str, target_port: int, delay: float, log_path: Path):
        self.port = free_port_on([listen])
        log = log_path.open("ab")
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.link_delay",
                f"--listen={listen}:{self.port}",
                f"--to=127.0.0.1:{target_port}",
                f"--delay={delay}",
            ],
            cwd=BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

        def answers():
            if self.popen.poll() is not None:
                raise AssertionError(f"the delay relay exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((listen, self.port), 1):
                return True
            return False

        wait_until(answers, 10, interval=0.1, message="the delay relay")

    def close(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
