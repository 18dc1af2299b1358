from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination


class NewestFirstPagination(CursorPagination):
    """Stable cursor pages, newest first (``?cursor=`` from ``next``); ``page_size`` from 1 to 500."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        """The requested page size; 400 when it is not a whole number from 1 to ``max_page_size``.

        DRF silently falls back to the default for ``page_size=abc`` or ``0`` and
        clamps ``9999``: a client then gets a different page than it asked for
        without knowing why.
        """
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError({self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]})
        return size

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update({"minimum": 1, "maximum": self.max_page_size, "default": self.page_size})
        return parameters

    def decode_cursor(self, request):
        """DRF's decoding, plus: the position must be an id.

        DRF checks the cursor's offset and direction but passes its position
        straight into ``filter(id__lt=...)``, so a hand-edited cursor such as
        ``p=abc`` raised ValueError there (a 500) instead of "Invalid cursor".
        """
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                int(cursor.position)
            except ValueError:
                raise NotFound(self.invalid_cursor_message) from None
        return cursor
