"""The `--metrics-port` and `--metrics-address` options of `run_scheduler` and `run_node`."""


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
