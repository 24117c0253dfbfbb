"""common.db.row_insert: a row inserted by its prepared statement is the row the ORM
would have written."""

import pytest
from django.db.models import F

from common.db import row_insert
from jobs.models import Job
from resources.models import DEFAULT_QUEUE_NAME, Queue

FIELDS = {
    "name": "train",
    "command": ["python", "-c", "print('é')"],
    "env": {"MODE": "fast"},
    "parameters": {"epochs": 3, "nested": [1, None]},
    "cpu_millis": 1500,
    "memory_mb": 256,
    "gpu": 0,
    "priority": -2,
    "timeout_seconds": None,
    "node_selector": {"zone": "b"},
}


def _read_back(job: Job) -> dict:
    """Every column of the stored row but the id and when it was made."""
    stored = Job.objects.get(pk=job.pk)
    return {
        field.attname: getattr(stored, field.attname)
        for field in Job._meta.concrete_fields
        if field.name not in ("id", "created_at")
    }


@pytest.mark.django_db
def test_a_row_inserted_reads_back_as_the_orms_with_its_database_defaults(team):
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    by_orm = Job.objects.create(team=team, queue=queue, **FIELDS)
    made = Job(team=team, queue=queue, **FIELDS)
    inserted = row_insert(made)

    assert inserted is made and made.pk is not None and made.pk != by_orm.pk
    assert not made._state.adding
    # concurrency_key has only a database default: left to it, and read back with the id.
    assert made.concurrency_key == ""
    assert made.created_at is not None
    assert _read_back(made) == _read_back(by_orm)
    stored = Job.objects.get(pk=made.pk)
    assert (stored.created_at, stored.concurrency_key) == (made.created_at, "")


@pytest.mark.django_db
def test_a_value_given_for_a_field_with_a_database_default_is_written(team):
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)
    job = row_insert(Job(team=team, queue=queue, concurrency_key="db", **FIELDS))

    assert Job.objects.get(pk=job.pk).concurrency_key == "db"


@pytest.mark.django_db
def test_an_expression_is_refused_before_anything_is_written(team):
    queue = Queue.objects.get(name=DEFAULT_QUEUE_NAME)

    with pytest.raises(TypeError, match="priority"):
        row_insert(Job(team=team, queue=queue, **{**FIELDS, "priority": F("gpu") + 1}))
    assert not Job.objects.exists()
