"""The browser's login and logout: a session cookie, with Django's CSRF protection."""

import math

from django.contrib.auth import views as auth_views
from django.http import HttpResponse

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
