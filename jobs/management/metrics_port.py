"""The `--metrics-port` and `--metrics-address` options of `run_scheduler` and `run_node`."""

from collections.abc import Callable

from django.core.management.base import CommandError


def add_metrics_arguments(parser, process: str) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"Serve this {process} process's own Prometheus metrics on this port (default: off).",
    )
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="Address the metrics port listens on (default 127.0.0.1; 0.0.0.0 for all).",
    )


def serve_metrics(command, serve: Callable[..., None], *, port: int | None, address: str) -> None:
    """Start serving a process's metrics, if a port was given; a port taken is an error
    before the process starts its work, not after."""
    if port is None:
        return
    try:
        serve(port=port, address=address)
    except OSError as exc:
        raise CommandError(f"cannot serve metrics on {address}:{port}: {exc.strerror}") from exc
    command.stdout.write(f"metrics on http://{address}:{port}/metrics")
