"""The browser's login and logout (a session cookie, with Django's CSRF protection), and
the audit log's page."""

import math

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import render

from .selectors import audit_event_list_visible, team_list_administered
from .throttling import LoginThrottle


class LoginView(auth_views.LoginView):
    """Django's login form, with the API login's per-address throttle on attempts."""

    def post(self, request, *args, **kwargs):
        throttle = LoginThrottle()
        if not throttle.allow_request(request, self):
            response = HttpResponse(
                "Too many login attempts; try again later.", status=429, content_type="text/plain"
            )
            response["Retry-After"] = str(math.ceil(throttle.wait()))
            return response
        return super().post(request, *args, **kwargs)


AUDIT_PAGE_SIZE = 100


@login_required
def audit_list(request):
    """The audit log of the teams the user administers (staff: all), newest first."""
    events = audit_event_list_visible(user=request.user)
    if not request.user.is_staff and not team_list_administered(user=request.user).exists():
        raise PermissionDenied("Only team admins may read the audit log.")
    action = request.GET.get("action", "")
    if action:
        events = events.filter(action=action)
    return render(
        request,
        "accounts/audit_list.html",
        {"events": events[:AUDIT_PAGE_SIZE], "action": action},
    )
