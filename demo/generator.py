"""Deterministic demo and benchmark data for finlock.

One generator feeds two consumers:

* ``load_demo`` loads the small demo (240 devices and contracts by default)
  through the domain services, so every row passes the same validation and
  audit trail as real input, then writes the payment history in bulk.
* ``iter_bench_rows`` yields plain tuples in batches for ``bench/seed.py``,
  which COPYs them into PostgreSQL at benchmark scale.

Both draw from the same ``plan_contracts`` with ``random.Random`` seeded from
a fixed seed, so the same seed on the same local day gives the same data.
Contracts are placed *relative to each provider's local today* so that every
situation an agent meets (current, due soon, overdue within or past grace,
paid off, defaulted, cancelled) exists whenever the demo is loaded.

Payment history is expressed through ``Installment.amount_paid`` (there is no
payment ledger yet), always between zero and ``amount_due``.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import random
import zoneinfo
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from devices.models import LockState
from payments.locks.decision import Line, Overrides, decide
from payments.models import Rules, contract_number_key, nth_due_date
from payments.money import split_evenly

DEFAULT_SEED = 2026
DEFAULT_DEVICES = 240

# The default lock policy (a provider that has not saved its own): days of
# grace after a due date before a lock, and reminders from this many days
# before one. The situations are built around them: "due soon" is within
# DUE_SOON_DAYS, "overdue within grace" is 1..GRACE_DAYS days late.
DEMO_RULES = Rules()
GRACE_DAYS = DEMO_RULES.grace_days
DUE_SOON_DAYS = DEMO_RULES.reminder_days_before

CENT = Decimal("0.01")


class Situation(StrEnum):
    """Where a contract stands relative to its provider's local today."""

    NOTHING_DUE_YET = "nothing_due_yet"  # active, first installment still ahead
    PAID_UP = "paid_up"  # active, everything due so far paid, next due > 3 days away
    DUE_SOON = "due_soon"  # active, next installment due within 3 days
    OVERDUE_GRACE = "overdue_grace"  # active, oldest unpaid 1-3 days late
    OVERDUE_PAST_GRACE = "overdue_past_grace"  # active, oldest unpaid 7-60 days late
    PAID_OFF = "paid_off"  # every installment paid, status paid_off
    DEFAULTED = "defaulted"  # written off after months of arrears
    CANCELLED = "cancelled"  # returned within the cooling-off period


# Relative frequency of each situation in a provider's book (percent).
SITUATION_WEIGHTS: dict[Situation, int] = {
    Situation.NOTHING_DUE_YET: 10,
    Situation.PAID_UP: 22,
    Situation.DUE_SOON: 14,
    Situation.OVERDUE_GRACE: 12,
    Situation.OVERDUE_PAST_GRACE: 20,
    Situation.PAID_OFF: 12,
    Situation.DEFAULTED: 5,
    Situation.CANCELLED: 5,
}

# Installment counts per frequency, weighted so a contract has six installments
# on average (the benchmark's 1M contracts give ~6M installments).
INSTALLMENT_COUNTS: dict[str, tuple[tuple[int, int], ...]] = {
    "monthly": ((3, 20), (4, 20), (6, 35), (9, 15), (12, 10)),
    "fortnightly": ((4, 30), (6, 40), (8, 30)),
    "weekly": ((4, 30), (6, 40), (8, 30)),
}
PERIOD_DAYS = {"weekly": 7, "fortnightly": 14, "monthly": 28}


# --- catalogue --------------------------------------------------------------


@dataclass(frozen=True)
class PhoneModel:
    """A handset on sale: its maker, model, TAC-like IMEI prefixes and street price."""

    maker: str
    model: str
    # Illustrative 8-digit type-allocation codes (the first 8 IMEI digits).
    tacs: tuple[str, ...]
    price: Mapping[str, int]  # whole currency units by ISO code
    dual_sim: int  # percent of units sold with a second IMEI
    serial_style: str


CATALOGUE: tuple[PhoneModel, ...] = (
    PhoneModel("Samsung", "Galaxy A05", ("35160927", "35160928", "35160929"), {"LKR": 30990, "KES": 13499}, 80, "sam"),
    PhoneModel("Samsung", "Galaxy A15", ("35291473", "35291474", "35291475"), {"LKR": 54990, "KES": 21999}, 80, "sam"),
    PhoneModel(
        "Samsung", "Galaxy A25 5G", ("35427518", "35427519", "35427520"), {"LKR": 84990, "KES": 33999}, 70, "sam"
    ),
    PhoneModel("Tecno", "Spark 20", ("86734206", "86734207", "86734208"), {"LKR": 36990, "KES": 15999}, 95, "tra"),
    PhoneModel("Tecno", "Camon 20", ("86802105", "86802106", "86802107"), {"LKR": 52990, "KES": 24999}, 95, "tra"),
    PhoneModel("Xiaomi", "Redmi 13C", ("86495307", "86495308", "86495309"), {"LKR": 32990, "KES": 14499}, 90, "xia"),
    PhoneModel(
        "Xiaomi", "Redmi Note 13", ("86581206", "86581207", "86581208"), {"LKR": 62990, "KES": 26999}, 90, "xia"
    ),
    PhoneModel("Infinix", "Hot 40i", ("35899412", "35899413", "35899414"), {"LKR": 33990, "KES": 14999}, 95, "tra"),
    PhoneModel("itel", "A70", ("35217864", "35217865", "35217866"), {"LKR": 21990, "KES": 9499}, 95, "tra"),
    PhoneModel("OPPO", "A18", ("86927603", "86927604", "86927605"), {"LKR": 41990, "KES": 17999}, 90, "bbk"),
    PhoneModel("vivo", "Y17s", ("86311604", "86311605", "86311606"), {"LKR": 42990, "KES": 18499}, 90, "bbk"),
    PhoneModel("Nokia", "C32", ("35684711", "35684712", "35684713"), {"LKR": 29990, "KES": 12999}, 60, "nok"),
)


# --- providers and other organisations ----------------------------------------


def _names(text: str) -> tuple[str, ...]:
    """A tuple from a comma-separated list (keeps long name lists readable)."""
    return tuple(name.strip() for name in text.split(","))


@dataclass(frozen=True)
class NamePool:
    """First names and surnames of one community, and the languages its people prefer."""

    first_names: tuple[str, ...]
    surnames: tuple[str, ...]
    languages: tuple[tuple[str, int], ...]
    weight: int


@dataclass(frozen=True)
class ProviderSpec:
    """Everything the generator needs to know about a demo provider."""

    slug: str
    name: str
    code: str  # contract-number prefix
    country: str
    currency: str
    time_zone: str
    languages: tuple[str, ...]
    hotline_numbers: tuple[str, ...]
    support_email: str
    website: str
    calling_code: str
    share: int  # percent of the demo's devices
    frequencies: tuple[tuple[str, int], ...]
    model_weights: tuple[int, ...]  # one weight per CATALOGUE entry
    name_pools: tuple[NamePool, ...]
    mobile_prefixes: tuple[str, ...]  # national significant number prefixes
    price_step: int  # prices are rounded to this many units ...
    price_ending: int  # ... minus this (54,990 LKR; 21,999 KES)
    down_step: int
    partial_step: int  # people pay round amounts

    def organisation_fields(self) -> dict:
        """Field values for the provider's ``Organisation`` row."""
        return {
            "kind": "provider",
            "name": self.name,
            "country": self.country,
            "currency": self.currency,
            "time_zone": self.time_zone,
            "languages": list(self.languages),
            "hotline_numbers": list(self.hotline_numbers),
            "support_email": self.support_email,
            "website": self.website,
        }

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The provider's time zone: due dates and "today" are local to it."""
        return zoneinfo.ZoneInfo(self.time_zone)


SINHALA = NamePool(
    first_names=_names(
        "Nimal, Kamal, Sunil, Chaminda, Tharindu, Kasun, Ruwan, Lahiru, Chathura, Dinesh, Pradeep, "
        "Sanjeewa, Dilani, Kumari, Nadeesha, Ishara, Sanduni, Gayani, Madhavi, Chamari, Hasini, Nirmala, "
        "Shanika, Iresha"
    ),
    surnames=_names(
        "Perera, Fernando, de Silva, Jayawardena, Bandara, Wickramasinghe, Gunasekara, Dissanayake, "
        "Herath, Kumara, Rathnayake, Senanayake, Weerasinghe, Karunaratne, Samarasinghe, Wijesinghe, "
        "Liyanage, Amarasekara"
    ),
    languages=(("si", 75), ("en", 25)),
    weight=72,
)
SRI_LANKAN_TAMIL = NamePool(
    first_names=_names(
        "Arun, Suresh, Rajkumar, Prakash, Kajan, Thusyanthan, Kavitha, Priya, Tharshini, Vithya, Nirosha, Sujatha"
    ),
    surnames=_names(
        "Sivakumar, Rajendran, Thevarajah, Navaratnam, Kandiah, Selvarajah, Shanmugam, Balasubramaniam, Ratnam"
    ),
    languages=(("ta", 75), ("en", 25)),
    weight=18,
)
SRI_LANKAN_MUSLIM = NamePool(
    first_names=("Mohamed Rizwan", "Ahamed", "Imran", "Nazeer", "Fathima Rifka", "Ayesha", "Shifana", "Rinoza"),
    surnames=("Mohideen", "Careem", "Marikar", "Hameed", "Ismail", "Farook"),
    languages=(("ta", 50), ("en", 50)),
    weight=10,
)
KENYAN = NamePool(
    first_names=_names(
        "Wanjiru, Kamau, Otieno, Achieng, Njeri, Mwangi, Kiprono, Chebet, Wairimu, Omondi, Akinyi, "
        "Mutua, Muthoni, Kibet, Nyambura, Brian, Faith, Mercy, Kevin, Dennis, Purity, Collins, Esther, "
        "Grace, Peter, Joseph, Mary, Halima"
    ),
    surnames=_names(
        "Kamau, Otieno, Mwangi, Odhiambo, Kiptoo, Wanjiku, Njoroge, Mutua, Ochieng, Kariuki, Chege, "
        "Kimani, Wafula, Barasa, Cheruiyot, Onyango, Mohamed, Hassan, Kiprotich, Nyaga, Wekesa, Atieno"
    ),
    languages=(("sw", 55), ("en", 45)),
    weight=100,
)

DIALOG = ProviderSpec(
    slug="dialog",
    name="Dialog Finance",
    code="DLG",
    country="LK",
    currency="LKR",
    time_zone="Asia/Colombo",
    languages=("en", "si", "ta"),
    hotline_numbers=("+94117100100", "+94777100100"),
    support_email="care@dialog-finance.example",
    website="https://dialog-finance.example",
    calling_code="94",
    share=55,
    frequencies=(("monthly", 85), ("fortnightly", 5), ("weekly", 10)),
    # A05 A15 A25 Spark Camon 13C Note13 Hot40i A70 A18 Y17s C32
    model_weights=(10, 16, 6, 6, 3, 14, 8, 4, 5, 10, 12, 6),
    name_pools=(SINHALA, SRI_LANKAN_TAMIL, SRI_LANKAN_MUSLIM),
    # 074 is only partly allocated to mobiles (0740-0744).
    mobile_prefixes=("70", "71", "72", "75", "76", "77", "78", "740", "741", "742", "743", "744"),
    price_step=1000,
    price_ending=10,
    down_step=500,
    partial_step=500,
)
JAMII = ProviderSpec(
    slug="jamii",
    # The README and the test fixtures call this provider "Jamii Phones Credit".
    name="Jamii Phones Credit",
    code="JMI",
    country="KE",
    currency="KES",
    time_zone="Africa/Nairobi",
    languages=("en", "sw"),
    hotline_numbers=("+254709100100", "+254202100100"),
    support_email="msaada@jamii-credit.example",
    website="https://jamii-credit.example",
    calling_code="254",
    share=45,
    frequencies=(("weekly", 45), ("monthly", 40), ("fortnightly", 15)),
    model_weights=(12, 10, 3, 16, 5, 8, 3, 12, 14, 5, 4, 8),
    name_pools=(KENYAN,),
    mobile_prefixes=_names(
        "700, 701, 702, 703, 704, 705, 706, 707, 708, 710, 711, 712, 713, 714, 715, 716, 717, 718, 719, "
        "720, 721, 722, 723, 724, 725, 726, 727, 728, 729, 740, 741, 742, 743, 745, 746, 748, 757, 758, "
        "759, 768, 769, 790, 791, 792, 793, 794, 795, 796, 797, 798, 799, 110, 111, 112, 113, 114, 115"
    ),
    price_step=100,
    price_ending=1,
    down_step=100,
    partial_step=50,
)
PROVIDERS: tuple[ProviderSpec, ...] = (DIALOG, JAMII)

SERVICE_CENTER = {
    "slug": "fixit",
    "kind": "service_center",
    "name": "FixIt Service Centre",
    "time_zone": "Asia/Colombo",
    "languages": ["en", "si", "ta", "sw"],
    "hotline_numbers": ["+94112555777"],
    "support_email": "desk@fixit-service.example",
    "website": "https://fixit-service.example",
}
PLATFORM = {
    "slug": "platform",
    "kind": "platform",
    "name": "finlock Platform",
    "time_zone": "UTC",
    "languages": ["en"],
    "hotline_numbers": ["+94117999000"],
    "support_email": "help@finlock.example",
    "website": "https://finlock.example",
}


# --- IMEIs --------------------------------------------------------------------

# The 6-digit serial part of an IMEI (after the 8-digit TAC) is split into
# disjoint ranges so demo and benchmark rows, and the two providers, never
# share an IMEI even when loaded into the same database.
_SNR_SPACE = 1_000_000
_DEMO_SNR = (0, 100_000)
_BENCH_SNR = (100_000, _SNR_SPACE)


class ImeiAllocator:
    """Hands out Luhn-valid IMEIs from one provider's share of each TAC's serial range.

    A dual-SIM phone gets two consecutive serials, as manufacturers do.
    """

    def __init__(self, *, provider_index: int, providers: int, bench: bool):
        low, high = _BENCH_SNR if bench else _DEMO_SNR
        width = (high - low) // providers
        self._start = low + provider_index * width
        self._end = self._start + width
        self._next: dict[str, int] = {}

    def take(self, model: PhoneModel, count: int) -> list[str]:
        """``count`` (1 or 2) IMEIs of ``model``."""
        for tac in model.tacs:
            snr = self._next.get(tac, self._start)
            if snr + count <= self._end:
                self._next[tac] = snr + count
                return [_imei(tac, snr + i) for i in range(count)]
        raise ValueError(
            f"The IMEI range for {model.maker} {model.model} is exhausted; load fewer contracts per provider."
        )


def _imei(tac: str, snr: int) -> str:
    body = f"{tac}{snr:06d}"
    return body + _luhn_check_digit(body)


def _luhn_check_digit(body: str) -> str:
    """The Luhn check digit of ``body`` (what stdnum.luhn.calc_check_digit gives, faster in the hot loop)."""
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = ord(char) - 48
        if position % 2 == 0:  # every second digit from the right, starting next to the check digit
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str(-total % 10)


# --- the plan of one contract ---------------------------------------------------


@dataclass
class ContractPlan:
    """Everything about one financed phone: device, customer, contract, schedule and history."""

    seq: int
    situation: Situation
    number: str
    # device
    maker: str
    model: str
    imei: str
    imei2: str
    serial_number: str
    device_created_at: dt.datetime
    desired_state: str  # also the contract's lock_state: payments decides, the device executes
    desired_reason: str
    desired_changed_at: dt.datetime | None
    reported_state: str
    reported_at: dt.datetime | None
    last_checkin_at: dt.datetime | None
    # customer
    customer_name: str
    phone_local: str  # as the customer would write it, e.g. "077 123 4567"
    phone_e164: str
    language: str
    national_id: str  # a fake ID in clear: the services store it masked plus a keyed digest
    customer_created_at: dt.datetime
    # contract
    cash_price: Decimal
    down_payment: Decimal
    financed_amount: Decimal
    installment_count: int
    frequency: str
    first_due_date: dt.date
    status: str
    arrears_cleared_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    due_dates: list[dt.date] = field(default_factory=list)
    amounts_due: list[Decimal] = field(default_factory=list)
    amounts_paid: list[Decimal] = field(default_factory=list)


def demo_number(spec: ProviderSpec, seq: int) -> str:
    """Contract number of the ``seq``-th demo contract, e.g. DLG-000042 (stable from day to day)."""
    return f"{spec.code}-{seq:06d}"


def bench_number(spec: ProviderSpec, seq: int) -> str:
    """Contract number of a benchmark contract, e.g. DLG-B00000042; the prefix marks bench rows."""
    return f"{bench_prefix(spec)}{seq:08d}"


def bench_prefix(spec: ProviderSpec) -> str:
    """What every benchmark contract number of ``spec`` starts with (``bench/seed.py --reset`` deletes by it)."""
    return f"{spec.code}-B"


def _weighted(rng: random.Random, pairs: tuple[tuple[object, int], ...]):
    """One value of ``(value, weight)`` pairs, drawn by weight."""
    values, cumulative = _table(pairs)
    return rng.choices(values, cum_weights=cumulative)[0]


@functools.cache
def _table(pairs: tuple[tuple[object, int], ...]) -> tuple[tuple, list[int]]:
    # random.choices accumulates the weights on every call; the generator draws
    # millions of times from a handful of fixed tables, so accumulate once.
    return tuple(p[0] for p in pairs), list(itertools.accumulate(p[1] for p in pairs))


@functools.cache
def _cumulative(weights: tuple[int, ...]) -> list[int]:
    return list(itertools.accumulate(weights))


def _local_phone(spec: ProviderSpec, nsn: str) -> str:
    """How a customer writes the number: 077 123 4567 in Sri Lanka, 0712 345678 in Kenya."""
    if spec.country == "LK":
        return f"0{nsn[:2]} {nsn[2:5]} {nsn[5:]}"
    return f"0{nsn[:3]} {nsn[3:]}"


def _national_id(spec: ProviderSpec, rng: random.Random) -> str:
    if spec.country == "LK":
        # NIC: birth year, day of the year (+500 for women), serial, check digit; old ones end in V.
        year = rng.randint(1962, 2005)
        day = rng.randint(1, 365) + rng.choice((0, 500))
        if year < 1990 and rng.random() < 0.5:
            return f"{year % 100:02d}{day:03d}{rng.randint(0, 9999):04d}V"
        return f"{year}{day:03d}{rng.randint(0, 99999):05d}"
    # Kenyan national ID card numbers: 7 or 8 digits.
    return str(rng.randint(10_000_000, 39_999_999) if rng.random() < 0.85 else rng.randint(1_000_000, 9_999_999))


_ALNUM = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def _serial_number(style: str, rng: random.Random) -> str:
    def chars(n: int) -> str:
        return "".join(rng.choices(_ALNUM, k=n))

    if style == "sam":
        return f"R{rng.choice('5689')}{rng.choice('8CGN')}{chars(8)}"
    if style == "xia":
        return f"{rng.randint(30000, 69999)}/{chars(8)}"
    if style == "tra":
        return f"{rng.randint(10**15, 10**16 - 1)}"
    if style == "bbk":
        return chars(12)
    return f"PH{chars(10)}"


def _money(units: int) -> Decimal:
    return Decimal(units).quantize(CENT)


def _partial(amount: Decimal, step: int, rng: random.Random) -> Decimal:
    """A round part-payment strictly between zero and ``amount``."""
    steps = int(amount * rng.randint(15, 85) / 100 / step)
    paid = _money(max(steps, 1) * step)
    if paid >= amount:
        paid = (amount / 2).quantize(CENT)
    return paid


def _at(day: dt.date, zone: zoneinfo.ZoneInfo, rng: random.Random, first_hour: int = 8, last_hour: int = 19):
    """An aware datetime on a local ``day`` during business hours."""
    return dt.datetime.combine(day, dt.time(rng.randint(first_hour, last_hour), rng.randint(0, 59)), tzinfo=zone)


def _pick_terms(spec: ProviderSpec, situation: Situation, today: dt.date, rng: random.Random):
    """Frequency, installment count, 0-based index of the first unpaid installment and its due date.

    The due date of that installment is drawn from the situation's window;
    the first due date is then that many periods earlier.
    """
    frequency = _weighted(rng, spec.frequencies)
    for _attempt in range(2):
        count = _weighted(rng, INSTALLMENT_COUNTS[frequency])
        period = PERIOD_DAYS[frequency]
        if situation == Situation.NOTHING_DUE_YET:
            index, offset = 0, rng.randint(DUE_SOON_DAYS + 1, period)
        elif situation == Situation.PAID_UP:
            index, offset = rng.randint(1, count - 1), rng.randint(DUE_SOON_DAYS + 1, period)
        elif situation == Situation.DUE_SOON:
            index, offset = rng.randint(0, count - 1), rng.randint(0, DUE_SOON_DAYS)
        elif situation == Situation.OVERDUE_GRACE:
            index, offset = rng.randint(0, count - 1), -rng.randint(1, GRACE_DAYS)
        elif situation == Situation.OVERDUE_PAST_GRACE:
            index, offset = rng.randint(0, count - 1), -rng.randint(7, 60)
        elif situation == Situation.DEFAULTED:
            index, offset = rng.randint(1, count - 1), -rng.randint(90, 240)
        elif situation == Situation.PAID_OFF:
            # ``index`` is the last installment here, paid like all the others.
            index, offset = count - 1, -rng.randint(1, 150)
        else:  # cancelled: returned around the first due date, nothing paid
            index, offset = 0, rng.randint(-30, DUE_SOON_DAYS)
        anchor = today + dt.timedelta(days=offset)
        # Monthly schedules keep the day of the month; lenders use days 1-28 so
        # that every month has the date. Otherwise bill fortnightly instead.
        if frequency == "monthly" and anchor.day > 28:
            frequency = "fortnightly"
            continue
        first_due = nth_due_date(anchor, frequency, -index)
        return frequency, count, index, anchor, first_due
    raise AssertionError("unreachable: a fortnightly schedule accepts any date")


# What a device still reports while offline when the server's newest state has
# not reached it: a paid-up phone still locked is the complaint finlock exists for.
_PREVIOUS_STATE = {
    Situation.PAID_UP: LockState.LOCKED,
    Situation.DUE_SOON: LockState.UNLOCKED,
    Situation.OVERDUE_GRACE: LockState.UNLOCKED,
    Situation.OVERDUE_PAST_GRACE: LockState.REMINDER,
    Situation.DEFAULTED: LockState.REMINDER,
    Situation.PAID_OFF: LockState.UNLOCKED,
}
_EXPECTED_STATE = {
    Situation.NOTHING_DUE_YET: LockState.UNLOCKED,
    Situation.PAID_UP: LockState.UNLOCKED,
    Situation.DUE_SOON: LockState.REMINDER,
    Situation.OVERDUE_GRACE: LockState.REMINDER,
    Situation.OVERDUE_PAST_GRACE: LockState.LOCKED,
    Situation.DEFAULTED: LockState.LOCKED,
    Situation.PAID_OFF: LockState.RELEASED,
    Situation.CANCELLED: LockState.RELEASED,
}


def _working_day(day: dt.date) -> dt.date:
    """``day`` or the Monday after it: locks start on working days only."""
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def _plan_one(
    *,
    spec: ProviderSpec,
    seq: int,
    number: str,
    situation: Situation,
    today: dt.date,
    now: dt.datetime,
    rng: random.Random,
    imeis: ImeiAllocator,
    models: Sequence[PhoneModel],
) -> ContractPlan:
    zone = spec.zone
    phone_model = rng.choices(models, cum_weights=_cumulative(spec.model_weights))[0]
    dual = rng.randint(1, 100) <= phone_model.dual_sim
    imei_list = imeis.take(phone_model, 2 if dual else 1)

    pool = rng.choices(spec.name_pools, cum_weights=_cumulative(tuple(p.weight for p in spec.name_pools)))[0]
    name = f"{rng.choice(pool.first_names)} {rng.choice(pool.surnames)}"
    language = _weighted(rng, pool.languages)
    nsn = rng.choice(spec.mobile_prefixes)
    nsn += f"{rng.randrange(10 ** (9 - len(nsn))):0{9 - len(nsn)}d}"

    # Money, in whole currency units first so no float is involved.
    base = phone_model.price[spec.currency]
    step = spec.price_step
    price_units = (base * rng.randint(94, 106) + step * 50) // (step * 100) * step - spec.price_ending
    down_pct = _weighted(rng, ((0, 15), (10, 20), (15, 20), (20, 25), (25, 10), (30, 10)))
    down_units = price_units * down_pct // 100 // spec.down_step * spec.down_step
    markup = rng.choice((8, 10, 12, 15, 18, 20))
    financed_units = (price_units - down_units) * (100 + markup) // 100
    cash_price, down_payment, financed = _money(price_units), _money(down_units), _money(financed_units)

    frequency, count, index, anchor, first_due = _pick_terms(spec, situation, today, rng)
    due_dates = [nth_due_date(first_due, frequency, i) for i in range(count)]
    amounts = split_evenly(financed, count, spec.currency)

    # Payment history: everything before the first unpaid installment is paid.
    paid = [amounts[i] if i < index else Decimal("0.00") for i in range(count)]
    if situation == Situation.PAID_OFF:
        paid = list(amounts)
    elif situation == Situation.CANCELLED:
        pass
    else:
        chance = {
            Situation.OVERDUE_PAST_GRACE: 40,
            Situation.OVERDUE_GRACE: 30,
            Situation.DEFAULTED: 30,
            Situation.DUE_SOON: 15,
            Situation.PAID_UP: 10,
        }.get(situation, 0)
        if rng.randint(1, 100) <= chance:
            paid[index] = _partial(amounts[index], spec.partial_step, rng)

    purchase_day = nth_due_date(first_due, frequency, -1)
    latest = now - dt.timedelta(minutes=rng.randint(5, 600))
    created_at = min(_at(purchase_day, zone, rng), latest)
    customer_created_at = created_at - dt.timedelta(minutes=rng.randint(3, 25))
    device_created_at = created_at - dt.timedelta(days=rng.randint(1, 40), minutes=rng.randint(0, 600))
    status = {
        Situation.PAID_OFF: "paid_off",
        Situation.DEFAULTED: "defaulted",
        Situation.CANCELLED: "cancelled",
    }.get(situation, "active")

    # Lock state as the lock engine would have left it: the pure decision, fed the
    # state the contract would be in by now (a phone past grace was locked on an
    # earlier working day), must give the state this situation stands for.
    expected = _EXPECTED_STATE[situation]
    decision = decide(
        status=status,
        lines=[Line(d, a, p) for d, a, p in zip(due_dates, amounts, paid, strict=True)],
        rules=DEMO_RULES,
        overrides=Overrides(),
        now=now,
        zone=zone,
        current=LockState.LOCKED if expected == LockState.LOCKED else LockState.UNLOCKED,
    )
    if decision.state != expected:
        raise AssertionError(
            f"{number}: the lock decision says {decision.state} where a {situation} contract is {expected}; "
            "demo/generator.py and payments/locks/decision.py disagree."
        )
    if expected == LockState.UNLOCKED:
        changed = created_at  # enrolled unlocked at the sale
    elif expected == LockState.REMINDER:
        # The reminder started three days before the due date (early morning sweep).
        changed = _at(anchor - dt.timedelta(days=DUE_SOON_DAYS), zone, rng, 6, 8)
    elif expected == LockState.LOCKED:
        changed = _at(_working_day(anchor + dt.timedelta(days=GRACE_DAYS + 1)), zone, rng, 9, 16)
    elif situation == Situation.PAID_OFF:
        changed = _at(due_dates[-1], zone, rng)
    else:  # cancelled: released when the return was booked
        changed = created_at + dt.timedelta(days=rng.randint(1, 10))
    changed = min(changed, latest)
    arrears_cleared_at = None

    roll = rng.randint(1, 100)
    previous = _PREVIOUS_STATE.get(situation)
    if roll <= 3:  # never checked in since it was sold
        reported, reported_at, checkin = "", None, None
    elif roll <= 9 and previous:  # offline: the newest state has not been acknowledged yet
        reported = previous
        if situation == Situation.PAID_UP:
            # "I paid and my phone is still locked": the arrears were cleared
            # recently and the unlock is waiting for the phone to come online.
            changed = arrears_cleared_at = now - dt.timedelta(minutes=rng.randint(20, 2880))
        checkin = changed - dt.timedelta(days=rng.randint(1, 6), minutes=rng.randint(0, 600))
        reported_at = checkin
    else:
        reported = expected
        reported_at = min(changed + dt.timedelta(seconds=rng.randint(2, 600)), latest)
        checkin = max(reported_at, now - dt.timedelta(minutes=rng.randint(1, 2880)))

    return ContractPlan(
        seq=seq,
        situation=situation,
        number=number,
        maker=phone_model.maker,
        model=phone_model.model,
        imei=imei_list[0],
        imei2=imei_list[1] if dual else "",
        serial_number=_serial_number(phone_model.serial_style, rng),
        device_created_at=device_created_at,
        desired_state=decision.state,
        desired_reason=decision.reason[:200],
        desired_changed_at=changed,
        reported_state=reported,
        reported_at=reported_at,
        last_checkin_at=checkin,
        customer_name=name,
        phone_local=_local_phone(spec, nsn),
        phone_e164=f"+{spec.calling_code}{nsn}",
        language=language,
        national_id=_national_id(spec, rng),
        customer_created_at=customer_created_at,
        cash_price=cash_price,
        down_payment=down_payment,
        financed_amount=financed,
        installment_count=count,
        frequency=frequency,
        first_due_date=first_due,
        status=status,
        arrears_cleared_at=arrears_cleared_at,
        created_at=created_at,
        updated_at=max(created_at, changed),
        due_dates=due_dates,
        amounts_due=amounts,
        amounts_paid=paid,
    )


def plan_contracts(
    spec: ProviderSpec,
    *,
    count: int,
    now: dt.datetime,
    seed: int = DEFAULT_SEED,
    bench: bool = False,
) -> Iterator[ContractPlan]:
    """Plan ``count`` contracts of one provider, deterministically for a seed and a local day.

    The first contracts cover every situation once, so even a tiny demo has
    them all; the rest follow ``SITUATION_WEIGHTS``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    # A string seed is hashed with SHA-512 by ``random``: stable across runs,
    # unlike hash(), and independent per provider and purpose.
    rng = random.Random(f"{seed}:{spec.slug}:{'bench' if bench else 'demo'}")
    today = now.astimezone(spec.zone).date()
    index = PROVIDERS.index(spec) if spec in PROVIDERS else 0
    imeis = ImeiAllocator(provider_index=index, providers=max(len(PROVIDERS), 1), bench=bench)
    situations = list(SITUATION_WEIGHTS)
    cumulative = _cumulative(tuple(SITUATION_WEIGHTS.values()))
    numbering = bench_number if bench else demo_number
    for seq in range(1, count + 1):
        situation = (
            situations[seq - 1] if seq <= len(situations) else rng.choices(situations, cum_weights=cumulative)[0]
        )
        yield _plan_one(
            spec=spec,
            seq=seq,
            number=numbering(spec, seq),
            situation=situation,
            today=today,
            now=now,
            rng=rng,
            imeis=imeis,
            models=CATALOGUE,
        )


def split_across_providers(total: int, specs: Sequence[ProviderSpec] = PROVIDERS) -> dict[str, int]:
    """Share ``total`` devices among providers by their ``share``; the remainder goes to the first."""
    counts = {s.slug: total * s.share // sum(p.share for p in specs) for s in specs}
    counts[specs[0].slug] += total - sum(counts.values())
    return counts


MIN_DEVICES = len(Situation) * len(PROVIDERS)


# --- organisations ------------------------------------------------------------


def ensure_organisations(*, actor=None) -> dict[str, object]:
    """Get or create the two providers, the service center and the platform, by slug.

    Existing organisations are left as they are (an admin may have edited
    them); a slug taken by an organisation of another kind is an error.
    """
    from django.core.exceptions import ValidationError
    from django.db import transaction

    from portal.audit import audit_record, snapshot
    from portal.models import Organisation

    wanted = [{"slug": s.slug, **s.organisation_fields()} for s in PROVIDERS] + [SERVICE_CENTER, PLATFORM]
    result: dict[str, Organisation] = {}
    with transaction.atomic():
        for fields in wanted:
            org = Organisation.objects.filter(slug=fields["slug"]).first()
            if org is None:
                org = Organisation(**fields)
                org.full_clean()
                org.save()
                audit_record(actor=actor, action="organisation.create", obj=org, after=snapshot(org))
            elif org.kind != fields["kind"]:
                raise ValidationError(
                    f"The organisation {org.slug!r} exists but is a {org.get_kind_display().lower()}, "
                    f"not a {fields['kind'].replace('_', ' ')}; rename it or use another database."
                )
            result[org.slug] = org
        for spec in PROVIDERS:
            _ensure_payment_channels(result[spec.slug], actor=actor)
        center = result[SERVICE_CENTER["slug"]]
        missing = [
            result[s.slug] for s in PROVIDERS if not center.served_providers.filter(pk=result[s.slug].pk).exists()
        ]
        if missing:
            center.served_providers.add(*missing)
            audit_record(
                actor=actor,
                action="organisation.serve",
                obj=center,
                after={"served_providers": sorted(p.slug for p in missing)},
            )
    return result


# How owners pay each demo provider: shown on the lock screen with the exact account and reference.
DEMO_PAYMENT_CHANNELS = {
    "dialog": [
        ("mobile_money", "eZ Cash", "#111# > Pay bills > Dialog Finance", "{contract}", "Dial #111# on any phone."),
        ("bank_transfer", "Bank of Ceylon", "0071234567 (Dialog Finance PLC)", "{contract}", ""),
        ("cash_agent", "Dialog outlets", "Any Dialog Arcade", "{contract}", "Pay cash; keep the receipt."),
    ],
    "jamii": [
        ("mobile_money", "M-PESA Paybill", "Paybill 522533", "{contract}", "Account number: your contract number."),
        ("mobile_money", "Airtel Money", "Business number 400200", "{contract}", ""),
    ],
}


# The numbers Daraja reports as BusinessShortCode for the demo's M-Pesa paybill.
DEMO_SHORT_CODES = {"M-PESA Paybill": "522533"}


def _ensure_payment_channels(provider, *, actor=None) -> None:
    """The provider's payment channels, created once (an admin's later edits are kept)."""
    from payments.models import PaymentChannel
    from portal.audit import audit_record, snapshot

    if PaymentChannel.objects.filter(provider=provider).exists():
        return
    for position, (kind, name, account, reference, instructions) in enumerate(
        DEMO_PAYMENT_CHANNELS.get(provider.slug, [])
    ):
        channel = PaymentChannel.objects.create(
            provider=provider,
            kind=kind,
            name=name,
            account=account,
            reference=reference,
            instructions=instructions,
            short_code=DEMO_SHORT_CODES.get(name, ""),
            position=position,
        )
        audit_record(actor=actor, action="payment_channel.create", obj=channel, after=snapshot(channel))


# --- (a) the small demo, through the domain services ----------------------------


@dataclass
class ProviderLoad:
    """What ``load_demo`` did for one provider."""

    provider: object
    created: int = 0
    skipped: bool = False
    existing: int = 0
    situations: Counter = field(default_factory=Counter)


def load_demo(*, devices: int = DEFAULT_DEVICES, seed: int = DEFAULT_SEED, now=None) -> list[ProviderLoad]:
    """Load the demo: organisations, then ``devices`` devices with customers and contracts.

    Devices, customers and contracts go through ``device_create``,
    ``customer_create`` and ``contract_create`` (validated and audited), the
    statuses through ``contract_set_status``; the payment history, lock
    states and back-dated creation times are then written in bulk, and one
    ``demo.history`` audit event per provider says so.

    Idempotent: a provider whose first demo contract exists is skipped. Each
    provider loads in one transaction, so a failure leaves nothing half-done.
    """
    from django.db import transaction
    from django.utils import timezone

    from devices.models import Device
    from devices.services.registry import device_create
    from payments.contracts.services import contract_create, contract_set_status, customer_create
    from payments.models import Contract, Customer, Installment
    from portal.audit import audit_record

    if devices < MIN_DEVICES:
        raise ValueError(f"The demo needs at least {MIN_DEVICES} devices to show every situation for each provider.")
    now = now or timezone.now()
    orgs = ensure_organisations()
    loads = []
    for spec, count in zip(PROVIDERS, split_across_providers(devices).values(), strict=True):
        provider = orgs[spec.slug]
        load = ProviderLoad(provider=provider)
        loads.append(load)
        if Contract.objects.filter(provider=provider, number=demo_number(spec, 1)).exists():
            load.skipped = True
            load.existing = (
                Contract.objects.filter(provider=provider).exclude(number__startswith=bench_prefix(spec)).count()
            )
            continue
        languages = {"en", *provider.languages}
        with transaction.atomic():
            rows = []
            for plan in plan_contracts(spec, count=count, now=now, seed=seed):
                device = device_create(
                    provider=provider,
                    actor=None,
                    imei=plan.imei,
                    imei2=plan.imei2,
                    serial_number=plan.serial_number,
                    maker=plan.maker,
                    model=plan.model,
                )
                customer = customer_create(
                    provider=provider,
                    actor=None,
                    name=plan.customer_name,
                    phone=plan.phone_local,
                    preferred_language=plan.language if plan.language in languages else provider.default_language,
                    national_id=plan.national_id,
                )
                contract = contract_create(
                    provider=provider,
                    actor=None,
                    number=plan.number,
                    device=device,
                    customer=customer,
                    cash_price=plan.cash_price,
                    down_payment=plan.down_payment,
                    financed_amount=plan.financed_amount,
                    installment_count=plan.installment_count,
                    frequency=plan.frequency,
                    first_due_date=plan.first_due_date,
                )
                if plan.status != contract.status:
                    contract_set_status(contract=contract, status=plan.status, actor=None)
                rows.append((plan, device, customer, contract))
                load.situations[plan.situation] += 1
            _write_history(rows, Device=Device, Customer=Customer, Contract=Contract, Installment=Installment)
            _issue_commands(provider, [contract.pk for _plan, _device, _customer, contract in rows], now=now)
            _enrol_some(provider, [device for _plan, device, _customer, _contract in rows])
            _unmatched_payments(provider, spec, now=now, seed=seed)
            audit_record(
                actor=None,
                action="demo.history",
                organisation=provider,
                object_repr=f"demo payment history and lock states for {len(rows)} contracts",
                after={"contracts": len(rows), "situations": dict(sorted(load.situations.items())), "seed": seed},
            )
        load.created = len(rows)
    return loads


#: How many of each provider's demo phones have enrolled, one in every ENROLLED_EVERY.
ENROLLED_EVERY = 20


def _enrol_some(provider, devices: list) -> None:
    """Enrol a few phones through the real enrolment (a demo token, a fresh challenge, a device key).

    So the device pages show what an enrolled phone has: offline codes, a re-enrolment code,
    a new offline-code key. Their device keys are thrown away, as a phone that lost its
    storage would: re-enrolling one needs a re-enrolment code from its page.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from devices.keys import public_key_b64
    from devices.protocol import b64, enrollment_message
    from devices.services.enrolment import device_enroll, enrollment_challenge_issue
    from devices.services.tokens import enrollment_token_create, enrollment_token_revoke

    token, secret = enrollment_token_create(provider=provider, name="Demo shop", shop="Demo", actor=None)
    for device in devices[::ENROLLED_EVERY]:
        key = Ed25519PrivateKey.generate()
        device_key = public_key_b64(key)
        challenge = enrollment_challenge_issue()["challenge"]
        message = enrollment_message(challenge=challenge, imei=device.imei, device_key=device_key)
        device_enroll(
            imei=device.imei,
            token_secret=secret,
            device_key=device_key,
            challenge=challenge,
            signature=b64(key.sign(message)),
            app_version="demo",
        )
    # Its secret was never shown to anyone: it enrols nothing more.
    enrollment_token_revoke(token=token, actor=None)


def _unmatched_payments(provider, spec, *, now, seed: int) -> None:
    """A few payments whose reference names no contract: the finance officer's queue is never empty in a demo."""
    from payments.ledger.services import payment_ingest

    rng = random.Random(seed + 7)
    references = ["school fees", "phone", "installment nov", "", "for my brother's phone"]
    for i, reference in enumerate(references):
        payment_ingest(
            provider=provider,
            channel="mobile_money",
            external_id=f"DEMO{spec.slug[:3].upper()}{i:03d}X",
            amount=Decimal(rng.choice([1500, 2500, 4000, 5200])),
            currency=provider.currency,
            received_at=now - dt.timedelta(hours=rng.randint(1, 72)),
            reference=reference,
            payer_name=rng.choice(spec.name_pools[0].first_names),
            source="api",
        )


def _issue_commands(provider, contract_ids: list[int], *, now) -> None:
    """Give every demo phone the signed command for its state, as the pipeline would have.

    The phones that report their state (most of them) have acknowledged it, so the portal's
    command history, desired vs reported state and the "paid, still locked" list look lived-in.
    """
    from django.db.models import F

    from devices.models import Device
    from devices.services.commands import StateChange, device_states_apply
    from payments.locks.screen import ProviderScreenData, screen_build
    from payments.locks.selectors import decide_contract, policy_rules
    from payments.models import Contract

    data, rules = ProviderScreenData.load(provider), policy_rules(provider)
    changes = []
    contracts = (
        Contract.objects.filter(pk__in=contract_ids)
        .select_related("provider", "customer", "device")
        .prefetch_related("installments", "overrides")
    )
    for contract in contracts:
        decision = decide_contract(contract, rules=rules, now=now)
        changes.append(
            StateChange(
                device_id=contract.device_id,
                state=contract.device.desired_state,
                reason=contract.device.desired_reason or decision.reason,
                screen=screen_build(data=data, contract=contract, decision=decision),
                allowed_numbers=data.allowed_numbers(),
                expires_at=decision.expires_at if contract.device.desired_state == "temp_unlocked" else None,
            )
        )
    since = dict(Device.objects.filter(pk__in=[c.device_id for c in changes]).values_list("pk", "desired_changed_at"))
    device_states_apply(changes=changes, actor=None)
    Device.objects.filter(pk__in=since, reported_state=F("desired_state")).update(reported_seq=F("command_seq"))
    # The history says when each state began; issuing today's command must not rewrite that.
    devices = list(Device.objects.filter(pk__in=since))
    for device in devices:
        device.desired_changed_at = since[device.pk]
    Device.objects.bulk_update(devices, ["desired_changed_at"])


def _write_history(rows, *, Device, Customer, Contract, Installment) -> None:  # noqa: N803 (model classes)
    """Back-date creation, set lock states and amounts paid in bulk (no payment service exists yet)."""
    devices, customers, contracts = [], [], []
    for plan, device, customer, contract in rows:
        device.created_at = plan.device_created_at
        device.desired_state = plan.desired_state
        device.desired_reason = plan.desired_reason
        device.desired_changed_at = plan.desired_changed_at
        device.reported_state = plan.reported_state
        device.reported_at = plan.reported_at
        device.last_checkin_at = plan.last_checkin_at
        devices.append(device)
        customer.created_at = plan.customer_created_at
        customers.append(customer)
        contract.created_at = plan.created_at
        contract.lock_state = plan.desired_state
        contract.lock_reason = plan.desired_reason
        contract.lock_changed_at = plan.desired_changed_at
        contract.arrears_cleared_at = plan.arrears_cleared_at
        contracts.append(contract)
    Device.objects.bulk_update(
        devices,
        [
            "created_at",
            "desired_state",
            "desired_reason",
            "desired_changed_at",
            "reported_state",
            "reported_at",
            "last_checkin_at",
        ],
        batch_size=500,
    )
    Customer.objects.bulk_update(customers, ["created_at"], batch_size=500)
    Contract.objects.bulk_update(
        contracts, ["created_at", "lock_state", "lock_reason", "lock_changed_at", "arrears_cleared_at"], batch_size=500
    )

    by_contract = {contract.pk: plan for plan, _d, _c, contract in rows}
    installments = []
    for inst in Installment.objects.filter(contract_id__in=by_contract).order_by("contract_id", "number"):
        plan = by_contract[inst.contract_id]
        # The plan used the same split_evenly and nth_due_date as build_schedule;
        # a mismatch would mean the two drifted apart, which must not pass silently.
        if inst.amount_due != plan.amounts_due[inst.number - 1] or inst.due_date != plan.due_dates[inst.number - 1]:
            raise AssertionError(f"schedule of {plan.number} differs from the plan at installment {inst.number}")
        paid = plan.amounts_paid[inst.number - 1]
        if paid:
            inst.amount_paid = paid
            installments.append(inst)
    Installment.objects.bulk_update(installments, ["amount_paid"], batch_size=500)


# --- (b) benchmark rows, for COPY ----------------------------------------------

DEVICE_COLUMNS = (
    "id",
    "provider_id",
    "imei",
    "imei2",
    "serial_number",
    "maker",
    "model",
    "desired_state",
    "desired_reason",
    "desired_changed_at",
    "reported_state",
    "reported_at",
    "last_checkin_at",
    "created_at",
    "updated_at",
)
CUSTOMER_COLUMNS = (
    "id",
    "provider_id",
    "name",
    "phone",
    "preferred_language",
    "national_id_masked",
    "national_id_digest",
    "created_at",
)
CONTRACT_COLUMNS = (
    "id",
    "provider_id",
    "number",
    "number_key",
    "device_id",
    "customer_id",
    "currency",
    "cash_price",
    "down_payment",
    "financed_amount",
    "installment_count",
    "frequency",
    "first_due_date",
    "status",
    "lock_state",
    "lock_reason",
    "lock_changed_at",
    "arrears_cleared_at",
    "created_at",
    "updated_at",
)
# No id: the identity column numbers installments as they arrive.
INSTALLMENT_COLUMNS = ("contract_id", "number", "due_date", "amount_due", "amount_paid")


@dataclass
class RowBatch:
    """One batch of rows for COPY, in foreign-key order (devices and customers before contracts)."""

    devices: list[tuple] = field(default_factory=list)
    customers: list[tuple] = field(default_factory=list)
    contracts: list[tuple] = field(default_factory=list)
    installments: list[tuple] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.contracts)


def bench_split(contracts: int) -> dict[str, int]:
    """How many benchmark contracts each provider gets."""
    return split_across_providers(contracts)


def iter_bench_rows(
    *,
    provider_ids: Mapping[str, int],
    contracts: int,
    first_ids: Mapping[str, int],
    batch_size: int = 10_000,
    seed: int = DEFAULT_SEED,
    now: dt.datetime | None = None,
) -> Iterator[RowBatch]:
    """Yield rows for ``contracts`` devices, customers and contracts (~6 installments each) in batches.

    ``provider_ids`` maps provider slug to its ``Organisation`` id;
    ``first_ids`` gives the first reserved id of ``device``, ``customer`` and
    ``contract`` — the caller reserves ``contracts`` consecutive ids in each
    sequence, so foreign keys are known before any row is written. Tuples
    follow ``DEVICE_COLUMNS``, ``CUSTOMER_COLUMNS``, ``CONTRACT_COLUMNS`` and
    ``INSTALLMENT_COLUMNS``.
    """
    from django.utils import timezone

    from payments.models import mask_national_id, national_id_digest

    now = now or timezone.now()
    offset = 0
    batch = RowBatch()
    for spec, count in zip(PROVIDERS, bench_split(contracts).values(), strict=True):
        provider_id = provider_ids[spec.slug]
        for plan in plan_contracts(spec, count=count, now=now, seed=seed, bench=True):
            device_id = first_ids["device"] + offset
            customer_id = first_ids["customer"] + offset
            contract_id = first_ids["contract"] + offset
            offset += 1
            batch.devices.append(
                (
                    device_id,
                    provider_id,
                    plan.imei,
                    plan.imei2,
                    plan.serial_number,
                    plan.maker,
                    plan.model,
                    plan.desired_state,
                    plan.desired_reason,
                    plan.desired_changed_at,
                    plan.reported_state,
                    plan.reported_at,
                    plan.last_checkin_at,
                    plan.device_created_at,
                    plan.updated_at,
                )
            )
            batch.customers.append(
                (
                    customer_id,
                    provider_id,
                    plan.customer_name,
                    plan.phone_e164,
                    plan.language,
                    mask_national_id(plan.national_id),
                    national_id_digest(plan.national_id),
                    plan.customer_created_at,
                )
            )
            batch.contracts.append(
                (
                    contract_id,
                    provider_id,
                    plan.number,
                    contract_number_key(plan.number),
                    device_id,
                    customer_id,
                    spec.currency,
                    plan.cash_price,
                    plan.down_payment,
                    plan.financed_amount,
                    plan.installment_count,
                    plan.frequency,
                    plan.first_due_date,
                    plan.status,
                    plan.desired_state,
                    plan.desired_reason,
                    plan.desired_changed_at,
                    plan.arrears_cleared_at,
                    plan.created_at,
                    plan.updated_at,
                )
            )
            batch.installments.extend(
                (contract_id, i + 1, plan.due_dates[i], plan.amounts_due[i], plan.amounts_paid[i])
                for i in range(plan.installment_count)
            )
            if len(batch) >= batch_size:
                yield batch
                batch = RowBatch()
    if len(batch):
        yield batch


# --- (c) the people's side: a few cases, an unlock request and a proof review per provider -------


def _demo_png() -> bytes:
    """A tiny real PNG (uploads are checked by content): the demo's scanned receipt."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\xf0\xf0\xf0" * 16 for _ in range(16))
    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def load_people_side(*, users: dict, now=None) -> int:
    """Open cases (one past its SLA), a pending unlock request and a pending proof review per provider.

    Through the support services, as staff would. Idempotent: a provider that has a case is
    skipped. Returns the number of providers filled.
    """
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction
    from django.utils import timezone

    from payments.models import Contract
    from portal.uploads import proof_check
    from support.models import Case
    from support.services.cases import case_assign, case_open
    from support.services.reviews import proof_review_submit
    from support.services.unlocks import unlock_request_create

    now = now or timezone.now()
    technician = users.get("fixit.tech")
    filled = 0
    for spec in PROVIDERS:
        agent = users.get(f"{spec.slug}.agent")
        if agent is None or Case.objects.filter(provider=agent.organisation).exists():
            continue
        provider = agent.organisation
        locked = list(
            Contract.objects.filter(provider=provider, lock_state="locked").select_related("device").order_by("id")[:4]
        )
        if len(locked) < 4:
            continue
        with transaction.atomic():
            case_open(
                provider=provider,
                category="paid_but_locked",
                opened_by=agent,
                summary="Says she paid yesterday at the agent shop; the phone is still locked.",
                contract=locked[0],
                now=now - dt.timedelta(hours=6),  # past its 4-hour SLA: shows as overdue
            )
            in_error = case_open(
                provider=provider,
                category="locked_in_error",
                opened_by=agent,
                summary="Bought this phone for cash; it locked after a reset.",
                contract=locked[1],
                now=now - dt.timedelta(hours=1),
            )
            case_assign(case=in_error, assignee=agent, actor=agent)
            case_open(
                provider=provider,
                category="payment_plan",
                opened_by=agent,
                summary="Lost his job; asks to spread the arrears over three months.",
                contract=locked[2],
                now=now - dt.timedelta(hours=20),
            )
            if technician is not None:
                unlock_request_create(
                    device=locked[3].device,
                    kind="temporary",
                    hours=4,
                    requested_by=technician,
                    reason="Owner at the counter with a receipt; needs the phone for a hospital appointment.",
                )
                proof_review_submit(
                    device=locked[1].device,
                    submitted_by=technician,
                    receipts=[proof_check(SimpleUploadedFile("receipt.png", _demo_png(), content_type="image/png"))],
                    note="Cash receipt from the shop, stamped.",
                )
        filled += 1
    return filled
