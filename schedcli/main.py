"""`sched`'s entry point: the command group and its commands."""

import click

from .app import SchedGroup
from .commands import auth, jobs, nodes, report, schedules, submit, update, workflows


@click.group(cls=SchedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--profile",
    envvar="SCHED_PROFILE",
    help="The stored login to use (default: default). SCHED_URL/SCHED_TOKEN override it.",
)
@click.version_option(package_name="scheduler", prog_name="sched")
def cli(profile):
    """The scheduler's command line, over its REST API.

    Exit codes: 0 ok, 1 the API refused, 2 usage, 3 a waited job failed (without an exit
    code of its own), 4 the server cannot be reached.
    """


for command in (
    auth.login,
    auth.logout,
    submit.submit,
    jobs.queue,
    jobs.show,
    jobs.why,
    jobs.history,
    jobs.logs,
    jobs.cancel,
    jobs.retry,
    jobs.hold,
    jobs.release,
    update.update,
    nodes.nodes,
    nodes.cordon,
    nodes.drain,
    nodes.uncordon,
    report.report,
    schedules.schedules,
    workflows.workflow,
):
    cli.add_command(command)


def main() -> None:
    cli.main(prog_name="sched")
