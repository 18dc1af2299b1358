"""Moved: a re-export for the modules not yet changed to the new paths (removed at the end of issue 10)."""

from payments.locks.screen import (
    EMERGENCY_NUMBERS as EMERGENCY_NUMBERS,
    GLOBAL_EMERGENCY as GLOBAL_EMERGENCY,
    DEFAULT_TEXTS as DEFAULT_TEXTS,
    TEXT_FIELDS as TEXT_FIELDS,
    LABELS as LABELS,
    builtin_texts as builtin_texts,
    labels_in as labels_in,
    language_chain as language_chain,
    ProviderScreenData as ProviderScreenData,
    _fill as _fill,
    screen_build as screen_build,
)
