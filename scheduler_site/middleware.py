"""Request guards that run before anything reads the request."""

from django.conf import settings
from django.http import JsonResponse


class RequestBodyLimitMiddleware:
    """Refuses an API request whose body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE.

    Django checks that limit only when `request.body` is read, and DRF's parsers read
    the stream instead, so without this a body of any size would be parsed.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"detail": "Content-Length is not a number."}, status=400)
            if length > limit:
                return JsonResponse(
                    {"detail": f"The request body is {length} bytes; at most {limit} are read."},
                    status=400,
                )
        return self.get_response(request)
