"""A team's fair share weight: set by staff in the admin, bounded by the database."""

import re

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from accounts.models import AuditEvent, Team

pytestmark = pytest.mark.django_db


def admin_change(browser: Client, team: Team, weight: str):
    return browser.post(
        f"/admin/accounts/team/{team.pk}/change/",
        {
            "name": team.name,
            "slug": team.slug,
            "fair_share_weight": weight,
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )


@pytest.fixture
def browser(staff):
    staff.is_superuser = True
    staff.save()
    client = Client()
    client.force_login(staff)
    return client


def test_staff_set_a_teams_weight_in_the_admin_and_see_its_past_share(browser, team):
    assert team.fair_share_weight == 1  # the default
    Team.objects.filter(pk=team.pk).update(past_share=0.25)
    page = browser.get(f"/admin/accounts/team/{team.pk}/change/").content.decode()
    assert 'name="fair_share_weight" value="1"' in page
    assert "0.25" in page and 'name="past_share"' not in page  # shown, not editable
    listed = browser.get("/admin/accounts/team/").content.decode()
    assert re.search(r'field-fair_share_weight">1<.*field-past_share">0\.25<', listed, re.S)

    response = admin_change(browser, team, "3")

    assert response.status_code == 302, response.content[:500]
    team.refresh_from_db()
    assert (team.fair_share_weight, team.past_share) == (3, 0.25)
    change = AuditEvent.objects.get(action="admin.change")
    assert "fair_share_weight" in str(change.change).lower().replace(" ", "_")


@pytest.mark.parametrize("weight", ["0", "1001", "-2", "two"])
def test_a_weight_out_of_range_is_refused_with_a_message_and_changes_nothing(browser, team, weight):
    response = admin_change(browser, team, weight)

    assert response.status_code == 200  # the form again, with its error
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["fair_share_weight"], errors
    team.refresh_from_db()
    assert team.fair_share_weight == 1
    assert not AuditEvent.objects.filter(action="admin.change").exists()


@pytest.mark.parametrize("weight", [0, 1001])
def test_the_database_refuses_a_weight_out_of_range(team, weight):
    with (
        pytest.raises(IntegrityError, match="team_fair_share_weight_range"),
        transaction.atomic(),
    ):
        Team.objects.filter(pk=team.pk).update(fair_share_weight=weight)
