"""Bank statements in the provider API: a provider's system uploads a statement, then follows its import."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from payments.api.base import api_client
from payments.models import StatementImport
from payments.statements.imports import statement_import_create, statement_imports_enqueue
from payments.statements.parsers.types import FORMATS
from portal.api.exceptions import api_validation_error
from portal.api.pagination import NewestFirstPagination
from portal.api.schema import ErrorSerializer
from portal.http import client_ip
from portal.permissions import Right, scope

# --- serializers -------------------------------------------------------------------------------


class StatementUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="MT940, camt.052/053/054 (XML) or a CSV export; up to 50 MB.")
    format = serializers.ChoiceField(
        choices=["", *FORMATS],
        required=False,
        default="",
        help_text="Empty: detected from the content.",
    )
    csv_mapping = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=60, help_text="A saved CSV column mapping's name."
    )


class StatementImportSerializer(serializers.ModelSerializer):
    summary = serializers.JSONField(
        read_only=True,
        help_text="When done: rows, credits, debits, returns, duplicates, errors, matched, unmatched, "
        "not_credited, and error_lines (line, reason) for what could not be read.",
    )

    class Meta:
        model = StatementImport
        fields = [
            "id",
            "filename",
            "format",
            "status",
            "total_lines",
            "processed_lines",
            "summary",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


# --- views -------------------------------------------------------------------------------------


def _visible_imports(view: generics.GenericAPIView) -> QuerySet[StatementImport]:
    if getattr(view, "swagger_fake_view", False):  # schema generation has no API client
        return StatementImport.objects.none()
    return scope(StatementImport.objects.all(), view.request.user)


class StatementListCreateView(generics.ListCreateAPIView):
    """Upload a bank statement for import (202; the import runs in the background), or list the imports."""

    serializer_class = StatementImportSerializer
    pagination_class = NewestFirstPagination
    parser_classes = [MultiPartParser]
    required_rights = {"GET": Right.IMPORT_STATEMENTS, "POST": Right.IMPORT_STATEMENTS}

    def get_queryset(self) -> QuerySet[StatementImport]:
        return _visible_imports(self)

    @extend_schema(
        request={"multipart/form-data": StatementUploadSerializer},
        responses={
            202: OpenApiResponse(StatementImportSerializer, description="Stored; follow it at its URL."),
            400: OpenApiResponse(ErrorSerializer, description="Empty or oversized file, unknown mapping or format."),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = StatementUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        client = api_client(request)
        try:
            record = statement_import_create(
                provider=client.organisation,
                filename=upload.name,
                raw=upload.read(),
                actor=client,
                format=form.validated_data["format"] or None,
                csv_mapping=form.validated_data["csv_mapping"],
                ip_address=client_ip(request),
            )
        except DjangoValidationError as exc:
            raise api_validation_error(exc) from None
        # Never fails the upload: with the broker down the import waits, stored, for the periodic re-queue.
        transaction.on_commit(lambda: statement_imports_enqueue([record.pk]))
        record.refresh_from_db()
        return Response(StatementImportSerializer(record).data, status=status.HTTP_202_ACCEPTED)


class StatementDetailView(generics.RetrieveAPIView):
    """One statement import: its status, progress and, when done, its summary."""

    serializer_class = StatementImportSerializer
    required_rights = {"GET": Right.IMPORT_STATEMENTS}

    def get_queryset(self) -> QuerySet[StatementImport]:
        return _visible_imports(self)
