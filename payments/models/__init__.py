"""The money side's tables, one module per part: contracts, locks, ledger, statements.

Everything is importable from ``payments.models`` (Django, the migrations and every other module use that
path); each table is defined in the module of its part.
"""

from payments.models.contracts import (
    MONEY as MONEY,
)
from payments.models.contracts import (
    Contract as Contract,
)
from payments.models.contracts import (
    ContractStatus as ContractStatus,
)
from payments.models.contracts import (
    Customer as Customer,
)
from payments.models.contracts import (
    Frequency as Frequency,
)
from payments.models.contracts import (
    Installment as Installment,
)
from payments.models.contracts import (
    contract_number_key as contract_number_key,
)
from payments.models.contracts import (
    mask_national_id as mask_national_id,
)
from payments.models.contracts import (
    national_id_digest as national_id_digest,
)
from payments.models.contracts import (
    nth_due_date as nth_due_date,
)
from payments.models.contracts import (
    reference_number_keys as reference_number_keys,
)
from payments.models.ledger import (
    ChannelKind as ChannelKind,
)
from payments.models.ledger import (
    Payment as Payment,
)
from payments.models.ledger import (
    PaymentAllocation as PaymentAllocation,
)
from payments.models.ledger import (
    PaymentChannel as PaymentChannel,
)
from payments.models.ledger import (
    PaymentConfirmation as PaymentConfirmation,
)
from payments.models.ledger import (
    PaymentFlag as PaymentFlag,
)
from payments.models.ledger import (
    PaymentProof as PaymentProof,
)
from payments.models.ledger import (
    PaymentSource as PaymentSource,
)
from payments.models.ledger import (
    PaymentStatus as PaymentStatus,
)
from payments.models.locks import (
    LOCK_SCREEN_PLACEHOLDERS as LOCK_SCREEN_PLACEHOLDERS,
)
from payments.models.locks import (
    LockOverride as LockOverride,
)
from payments.models.locks import (
    LockPolicy as LockPolicy,
)
from payments.models.locks import (
    LockRefresh as LockRefresh,
)
from payments.models.locks import (
    LockScreenText as LockScreenText,
)
from payments.models.locks import (
    OverrideKind as OverrideKind,
)
from payments.models.locks import (
    RefreshKind as RefreshKind,
)
from payments.models.locks import (
    Rules as Rules,
)
from payments.models.locks import (
    _default_reminders_after as _default_reminders_after,
)
from payments.models.locks import (
    _default_reminders_before as _default_reminders_before,
)
from payments.models.locks import (
    _default_weekdays as _default_weekdays,
)
from payments.models.locks import (
    _validate_day_list as _validate_day_list,
)
from payments.models.locks import (
    _validate_weekdays as _validate_weekdays,
)
from payments.models.locks import (
    template_placeholders as template_placeholders,
)
from payments.models.locks import (
    validate_lock_screen_text as validate_lock_screen_text,
)
from payments.models.statements import (
    CsvColumnMapping as CsvColumnMapping,
)
from payments.models.statements import (
    ImportStatus as ImportStatus,
)
from payments.models.statements import (
    StatementImport as StatementImport,
)
from payments.models.statements import (
    StatementLine as StatementLine,
)
