"""`manage.py ensure_admin`: the platform admin and the demo team, created once."""

import os

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import Role, Team, User
from accounts.services import team_add_member


class Command(BaseCommand):
    help = "Create (or reset the password of) a superuser, and make it admin of a team."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--team", default="demo", help="Slug of the team to create or join")

    @transaction.atomic
    def handle(self, *args, username, team, **options):
        password = os.environ.get("ADMIN_PASSWORD")
        if not password:
            raise CommandError("Set ADMIN_PASSWORD in the environment (it is not read from argv).")
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_superuser(username=username, email="", password=password)
        else:
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
        team_obj, _ = Team.objects.get_or_create(slug=team, defaults={"name": team.title()})
        team_add_member(team=team_obj, user=user, role=Role.ADMIN)
        self.stdout.write(f"superuser {username} is admin of team {team_obj.slug}")
