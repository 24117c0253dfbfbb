"""For end-to-end modules whose tests share one platform: the module defines
`platform_cluster` (module-scoped, from `tests.processes.shared_cluster`), and each test
takes `own_team`, a team of its own on it, and `team_api`, its member's API client."""

import contextlib
import itertools

import pytest

from accounts.models import Role, Team, User
from accounts.services import team_add_member
from jobs.models import TERMINAL_JOB_STATUSES, Job
from jobs.services.actions import JobStateError, job_cancel
from resources.models import LIVE_ALLOCATION_STATUSES, Allocation
from tests.conftest import token_client
from tests.processes import wait_until

_teams = itertools.count(1)


@pytest.fixture
def own_team(platform_cluster, request):
    """A team of the test's own on the module's platform: its rows are committed, for the
    platform's processes to see, and its lists show only the test's jobs. Afterwards
    whatever of its jobs is still live is cancelled and its room freed, so that the next
    test finds the nodes empty; the platform's logs are printed when the test failed."""
    slug = f"team-{next(_teams)}"
    team = Team.objects.create(name=slug, slug=slug)
    yield team
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(platform_cluster.logs())
    for job in Job.objects.filter(team=team).exclude(status__in=TERMINAL_JOB_STATUSES):
        with contextlib.suppress(JobStateError):  # it ended meanwhile
            job_cancel(job=job, reason="the test ended")
    held = Allocation.objects.filter(execution__job__team=team, status__in=LIVE_ALLOCATION_STATUSES)
    wait_until(lambda: not held.exists(), 30, message=f"the jobs of {slug} to end")


@pytest.fixture
def team_api(own_team):
    user = User.objects.create_user(own_team.slug, password="correct horse battery")
    team_add_member(team=own_team, user=user, role=Role.MEMBER)
    return token_client(user)
