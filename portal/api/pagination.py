from rest_framework.pagination import CursorPagination


class NewestFirstPagination(CursorPagination):
    """Stable cursor pages, newest first (``?cursor=`` from ``next``); ``page_size`` up to 500."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
