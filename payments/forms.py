"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.locks.forms import (
    WEEKDAYS as WEEKDAYS,
    DayListField as DayListField,
    LockPolicyForm as LockPolicyForm,
    LockScreenTextForm as LockScreenTextForm,
)
from payments.ledger.forms import (
    MatchByNumberForm as MatchByNumberForm,
    ReverseForm as ReverseForm,
    TransactionLookupForm as TransactionLookupForm,
    _proof_field as _proof_field,
    _ProofMixin as _ProofMixin,
    VerifyExistingForm as VerifyExistingForm,
    RecordFromProofForm as RecordFromProofForm,
    PaymentChannelForm as PaymentChannelForm,
)
from payments.statements.forms import (
    StatementUploadForm as StatementUploadForm,
    BLANK_HEADER as BLANK_HEADER,
    CSV_SAMPLE_MAX_BYTES as CSV_SAMPLE_MAX_BYTES,
    ColumnField as ColumnField,
    OptionalTextField as OptionalTextField,
    ListField as ListField,
    SeparatorField as SeparatorField,
    _column as _column,
    CsvMappingForm as CsvMappingForm,
)
