import pytest


@pytest.fixture
def smtp(smtp_server, settings):
    """The SMTP receiver, with this process's e-mail sent to it."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", smtp_server.port
    return smtp_server
