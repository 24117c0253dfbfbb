from django.apps import AppConfig
from django.core import checks


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from . import schema  # noqa: F401  (registers the OpenAPI token scheme)
        from .audit import record_session_login, record_session_login_failure

        checks.register(check_throttle_rates)
        user_logged_in.connect(record_session_login, dispatch_uid="audit_session_login")
        user_login_failed.connect(
            record_session_login_failure, dispatch_uid="audit_session_login_failure"
        )


def check_throttle_rates(app_configs, **kwargs):
    """A mistyped API_THROTTLE_* rate stops the start, not every request."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    from .throttling import parse_rate

    errors = []
    for scope, rate in settings.API_THROTTLE_RATES.items():
        if not rate:
            continue
        try:
            parse_rate(rate)
        except ImproperlyConfigured as exc:
            errors.append(
                checks.Error(str(exc), obj=f"API_THROTTLE_RATES[{scope!r}]", id="accounts.E001")
            )
    return errors
