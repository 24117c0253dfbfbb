"""The OpenAPI schema's shared parts: the error bodies every app answers with, and the
schema class that lists those errors on each operation, so views only declare what
they return when things go well (and the errors peculiar to them)."""

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiResponse
from rest_framework import permissions, serializers


class ErrorSerializer(serializers.Serializer):
    """Why the request was refused: not authenticated (401), not allowed (403), not
    found (404), or throttled (429, with a Retry-After header)."""

    detail = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer):
    """A 400: one key per field in error, each with its messages (nested for nested
    fields, e.g. `{"resources": {"cpu": ["..."]}}`); `non_field_errors` for the request
    as a whole; `detail` when the body could not be parsed."""

    non_field_errors = serializers.ListField(child=serializers.CharField(), required=False)
    detail = serializers.CharField(required=False)


def refused(description: str) -> OpenApiResponse:
    """A 400 that comes from the state of an object rather than from the input."""
    return OpenApiResponse(ValidationErrorSerializer, description=description)


ERROR_DESCRIPTIONS = {
    "400": "Invalid input, with messages per field.",
    "401": "No valid credentials.",
    "403": "Not allowed for this caller.",
    "404": "No such object among those the caller may see.",
    "429": "Too many requests; see Retry-After.",
}
SAFE = ("GET", "HEAD", "OPTIONS")


class AutoSchema(openapi.AutoSchema):
    """Adds the error answers an operation can give to those its view declares."""

    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation["responses"]
        for code in self._error_codes(operation):
            if code not in responses:
                serializer = ValidationErrorSerializer if code == "400" else ErrorSerializer
                response = self._get_response_for_code(serializer, code)
                response["description"] = ERROR_DESCRIPTIONS[code]
                responses[code] = response
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _error_codes(self, operation) -> list[str]:
        parameters = operation.get("parameters", [])
        checks = self.view.get_permissions()
        public = all(isinstance(p, permissions.AllowAny) for p in checks)
        codes = []
        if "requestBody" in operation or any(p["in"] == "query" for p in parameters):
            codes.append("400")
        if not public:
            codes.append("401")
            only_authenticated = all(isinstance(p, permissions.IsAuthenticated) for p in checks)
            if self.method not in SAFE or not only_authenticated:
                codes.append("403")
        if any(p["in"] == "path" for p in parameters) or self._is_paginated():
            codes.append("404")
        if self.view.get_throttles():
            codes.append("429")
        return codes

    def _is_paginated(self) -> bool:
        return self.method == "GET" and self._is_list_view() and self._get_paginator() is not None
