"""The API's list pages: numbered for most lists, by cursor for the jobs list."""

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


class CursorPagination(pagination.CursorPagination):
    """Newest first, by an opaque cursor: each page is one index range scan, however deep.

    There is no count: counting a large filtered list costs more than the page itself.
    """

    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"
    max_page_size = 500
