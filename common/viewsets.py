"""View behaviour shared by every app's API."""

from rest_framework.exceptions import NotFound


class NameLookupMixin:
    """For viewsets whose objects are looked up by name in the path: PostgreSQL text
    cannot hold NUL, so a name with one is no object's (a 404, not a database error)."""

    def get_object(self):
        if "\x00" in self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, ""):
            raise NotFound()
        return super().get_object()
