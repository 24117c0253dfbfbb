"""The database itself refuses oversubscribed or negative node counters."""

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F

from nodes.models import Node

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("resource", ["cpu_millis", "memory_mb", "gpu"])
def test_allocated_above_capacity_cannot_be_committed(resource):
    node = Node.objects.create(name="n1", cpu_millis=2000, memory_mb=1024, gpu=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Node.objects.filter(pk=node.pk).update(**{f"allocated_{resource}": F(resource) + 1})


@pytest.mark.parametrize("resource", ["cpu_millis", "memory_mb", "gpu"])
def test_allocated_below_zero_cannot_be_committed(resource):
    node = Node.objects.create(name="n1", cpu_millis=2000, memory_mb=1024, gpu=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Node.objects.filter(pk=node.pk).update(**{f"allocated_{resource}": -1})
