"""What can go wrong, each with the exit code the command ends with."""

# The exit codes, as README's "Command line" lists them.
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130  # Ctrl-C, e.g. during submit --wait or logs -f


class SchedError(Exception):
    """An error the command reports in a line (or a JSON object) and ends with."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, *, detail=None):
        super().__init__(message)
        self.message = message
        self.detail = detail


class ApiRefused(SchedError):
    """The API answered with a 4xx: `detail` is its JSON answer (field messages)."""

    def __init__(self, status: int, detail):
        super().__init__(f"the server refused ({status})", detail=detail)
        self.status = status


class ServerUnreachable(SchedError):
    """No answer, or an answer from a server that failed (5xx)."""

    exit_code = EXIT_UNREACHABLE


class NotConfigured(SchedError):
    """No server URL or token: neither `sched login` nor SCHED_URL/SCHED_TOKEN."""

    exit_code = EXIT_USAGE
