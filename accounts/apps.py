from django.apps import AppConfig
from django.core import checks


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        checks.register(check_throttle_rates)


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
