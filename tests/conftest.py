from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import setup_databases, teardown_databases
from rest_framework.test import APIClient

from accounts.models import Role, Team, User
from accounts.services import api_token_issue, team_add_member
from jobs.agent import cgroups
from nodes.models import Node
from resources.models import DEFAULT_QUEUE_NAME, Queue
from tests.processes import Cluster

# The alert receivers' fixtures (`webhook`, `smtp_server`), for tests/alerts and tests/e2e;
# RabbitMQ's (`rabbitmq`), for the tests that run the platform on it.
pytest_plugins = ["tests.alerts.receivers", "tests.rabbitmq"]

# The development database's name, read before any test database replaces it.
DEVELOPMENT_DATABASE = settings.DATABASES["default"]["NAME"]


def agent_cgroup_dirs() -> set[Path]:
    """The directories of job cgroups that node agents on this host have made."""
    return {d for own in cgroups.own_groups().values() for d in own.glob("scheduler-*")}


@pytest.fixture(scope="session", autouse=True)
def no_job_cgroups_left():
    """Agents the tests SIGKILL leave their jobs' (empty) cgroups behind, which an agent of
    the same node and directories would have removed at its start: removed at the end."""
    before = agent_cgroup_dirs()
    yield
    for directory in agent_cgroup_dirs() - before:
        for group in directory.iterdir():
            if group.is_dir():
                cgroups.JobCgroup(0, group, group).remove()
        directory.rmdir()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, django_db_keepdb, django_db_createdb):
    """The test database, whichever tests run. pytest-django makes it only when a test
    that runs asks for `db`, `transactional_db` or `live_server`; tests that share a
    platform (`tests.processes.shared_cluster`) reach the database through a module's
    fixture instead, and run on their own they would use, and empty, the development
    database."""
    if connection.settings_dict["NAME"] != DEVELOPMENT_DATABASE:
        yield  # pytest-django made it
        return
    keepdb = django_db_keepdb and not django_db_createdb
    with django_db_blocker.unblock():
        made = setup_databases(verbosity=0, interactive=False, aliases={"default"}, keepdb=keepdb)
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock():
            teardown_databases(made, verbosity=0)


@pytest.fixture
def broker():
    """The test Redis database, emptied before and after the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def cluster(transactional_db, broker, tmp_path, request):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def default_queue(db):
    """The queue every team may use. A migration creates it, but transactional tests empty
    every table when they end, so the tests after them need it made again."""
    return Queue.objects.get_or_create(name=DEFAULT_QUEUE_NAME, defaults={"all_teams": True})[0]


@pytest.fixture
def team(default_queue):
    return Team.objects.create(name="Blue", slug="blue")


@pytest.fixture
def other_team(db):
    return Team.objects.create(name="Red", slug="red")


@pytest.fixture
def member(team):
    user = User.objects.create_user("alice", password="correct horse battery")
    team_add_member(team=team, user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def outsider(other_team):
    user = User.objects.create_user("mallory", password="correct horse battery")
    team_add_member(team=other_team, user=user, role=Role.MEMBER)
    return user


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=user, name='test').key}")
    return client


@pytest.fixture
def api(member):
    return token_client(member)


@pytest.fixture
def staff(db):
    return User.objects.create_user("root", password="correct horse battery", is_staff=True)


@pytest.fixture
def staff_api(staff):
    return token_client(staff)


@pytest.fixture
def outsider_api(outsider):
    return token_client(outsider)


@pytest.fixture
def small_node(db):
    """A registered node (no agent running) so submissions have somewhere to fit."""
    return Node.objects.create(name="static-1", cpu_millis=4000, memory_mb=8192, gpu=1)
