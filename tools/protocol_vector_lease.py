"""The protocol v2 lease cases: trusted time, warnings, the lock window, offline codes, temporary unlocks.

Expectations WRITTEN BY HAND from docs/lock-pipeline.md "Offline lease", as in tools/protocol_vector_cases.py.
Times: a command issued on Monday 2 March 2026 06:00 UTC is 11:30 in Colombo (UTC+05:30, no daylight saving).
"""

from __future__ import annotations

from typing import Any

from tools.protocol_vector_build import DAY, WEEKDAYS_9_TO_17, at, case, cmd, code, command, phone, sealed

CASES: list[dict[str, Any]] = []
add = CASES.append

# --- The offline lease: trusted time, warnings, the lock window, offline codes ---------------------------

_lease7 = {"lease_until": "2026-03-09T06:00:00Z", "lease_expiry_state": "locked", "offline_lock_days": 7}
add(
    case(
        "lease_clock_set_back",
        "A 7-day lease with a 3-day warning, the phone's own clock set back (and forward): only the "
        "monotonic time counts. Unlocked, warned from day 4, locked at day 7 exactly, and it stays locked.",
        ["lease", "trusted time", "wall clock ignored", "warning boundary"],
        phone(),
        [
            cmd(sealed(command(seq=2, **_lease7)), "apply", "unlocked", 2),
            at(DAY, "2026-03-03T06:00:00Z", "unlocked", False),
            at(DAY, "2031-01-01T00:00:00Z", "unlocked", False),
            at(4 * DAY - 1, "2026-03-06T05:59:59Z", "unlocked", False),
            at(4 * DAY, "2026-02-01T00:00:00Z", "unlocked", True),
            at(7 * DAY - 1, "2025-12-31T00:00:00Z", "unlocked", True),
            at(7 * DAY, "2025-12-30T00:00:00Z", "locked", False),
            at(60 * DAY, "2026-03-02T06:00:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "lease_lock_window",
        "Time zone Asia/Colombo (UTC+05:30), locks may start 09:00-17:00 Monday to Friday. The lease ends "
        "Friday 17:30 local: warned from Thursday 17:30; reminder and warning over the weekend and until "
        "Monday 08:59:59; locked from Monday 09:00:00 and still at 18:00.",
        ["lease", "lock window", "time zone", "warning"],
        phone(),
        [
            cmd(
                sealed(
                    command(
                        seq=2,
                        lease_until="2026-03-06T12:00:00Z",
                        lease_expiry_state="locked",
                        lease_warning_days=1,
                        paid_until="2026-03-06T12:00:00Z",
                        offline_lock_days=4,
                        lock_window=WEEKDAYS_9_TO_17,
                    )
                ),
                "apply",
                "unlocked",
                2,
            ),
            at(280_799, "2026-03-05T11:59:59Z", "unlocked", False),
            at(280_800, "2026-03-05T12:00:00Z", "unlocked", True),
            at(367_199, "2026-03-06T11:59:59Z", "unlocked", True),
            at(367_200, "2026-03-06T12:00:00Z", "reminder", True),
            at(432_000, "2026-03-07T06:00:00Z", "reminder", True),
            at(595_799, "2026-03-09T03:29:59Z", "reminder", True),
            at(595_800, "2026-03-09T03:30:00Z", "locked", False),
            at(628_200, "2026-03-09T12:30:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "lease_lock_window_edges",
        "A lease ending Tuesday 07:00 Colombo time, before the 09:00 window opens that day: reminder and "
        "warning until 08:59:59, locked at 09:00. Then a new command with a window of Friday 20:00-24:00 "
        "(end_hour 24) and a lease ending Friday 10:00: reminder and warning until 19:59:59, locked at 20:00.",
        ["lease", "lock window", "end_hour 24", "new command resets the lease"],
        phone(in_force=None),  # a phone whose first command this is: trusted time starts at its issued_at
        [
            cmd(
                sealed(
                    command(
                        seq=2,
                        issued_at="2026-03-01T01:30:00Z",
                        lease_until="2026-03-03T01:30:00Z",
                        lease_expiry_state="locked",
                        lease_warning_days=1,
                        offline_lock_days=2,
                        lock_window=WEEKDAYS_9_TO_17,
                    )
                ),
                "apply",
                "unlocked",
                2,
            ),
            at(DAY - 1, "2026-03-02T01:29:59Z", "unlocked", False),
            at(2 * DAY, "2026-03-03T01:30:00Z", "reminder", True),
            at(2 * DAY + 7199, "2026-03-03T03:29:59Z", "reminder", True),
            at(2 * DAY + 7200, "2026-03-03T03:30:00Z", "locked", False),
            cmd(
                sealed(
                    command(
                        seq=3,
                        issued_at="2026-03-04T04:30:00Z",
                        lease_until="2026-03-06T04:30:00Z",
                        lease_expiry_state="locked",
                        lease_warning_days=0,
                        offline_lock_days=2,
                        lock_window={"start_hour": 20, "end_hour": 24, "weekdays": [4]},
                    )
                ),
                "apply",
                "unlocked",
                3,
            ),
            at(2 * DAY - 1, "2026-03-06T04:29:59Z", "unlocked", False),
            at(2 * DAY, "2026-03-06T04:30:00Z", "reminder", True),
            at(2 * DAY + 35_999, "2026-03-06T14:29:59Z", "reminder", True),
            at(2 * DAY + 36_000, "2026-03-06T14:30:00Z", "locked", False),
            at(3 * DAY, "2026-03-07T04:30:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "lease_expiry_reminder",
        "A lease that expires into `reminder` (a dispute hold: the phone must never lock): unlocked, warned "
        "from day 4, reminder (no warning: nothing more will happen) from day 7, still reminder at day 30.",
        ["lease", "lease_expiry_state reminder"],
        phone(),
        [
            cmd(
                sealed(command(seq=2, **{**_lease7, "lease_expiry_state": "reminder"}, lock_window=WEEKDAYS_9_TO_17)),
                "apply",
                "unlocked",
                2,
            ),
            at(3 * DAY, "2026-03-05T06:00:00Z", "unlocked", False),
            at(4 * DAY, "2026-03-06T06:00:00Z", "unlocked", True),
            at(7 * DAY, "2026-03-09T06:00:00Z", "reminder", False),
            at(30 * DAY, "2026-04-01T06:00:00Z", "reminder", False),
        ],
    )
)

add(
    case(
        "lease_reminder_to_locked",
        "A `reminder` command with a lease expiring into `locked` shows reminder, then reminder with the "
        "warning, then locked. A `locked` command (no lease) stays locked.",
        ["lease", "reminder", "locked"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="reminder", reason="due today", **_lease7)), "apply", "reminder", 2),
            at(DAY, "2026-03-03T06:00:00Z", "reminder", False),
            at(5 * DAY, "2026-03-07T06:00:00Z", "reminder", True),
            at(7 * DAY, "2026-03-09T06:00:00Z", "locked", False),
            cmd(
                sealed(command(seq=3, state="locked", reason="overdue", issued_at="2026-03-09T06:00:00Z")),
                "apply",
                "locked",
                3,
            ),
            at(100 * DAY, "2026-06-17T06:00:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "offline_code_extends_lease",
        "Locked by a 7-day lease at day 8, the owner enters an offline code for 5 days: unlocked until day "
        "13 (5 days from entry, not from the lease's end), locked again at day 13 exactly.",
        ["offline code", "lease", "lifts a lease lock"],
        phone(),
        [
            cmd(sealed(command(seq=2, **_lease7, lease_warning_days=0)), "apply", "unlocked", 2),
            at(7 * DAY - 1, "2026-03-09T05:59:59Z", "unlocked", False),
            at(8 * DAY, "2026-03-10T06:00:00Z", "locked", False),
            code(5, "unlocked", False),
            at(12 * DAY + DAY // 2, "2026-01-01T00:00:00Z", "unlocked", False),
            at(13 * DAY - 1, "2026-03-15T05:59:59Z", "unlocked", False),
            at(13 * DAY, "2026-03-15T06:00:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "temp_unlocked_expiry",
        "A locked phone is unlocked for 2 hours (temp_unlocked, issued an hour later): temp_unlocked until "
        "expires_at (clock set back meanwhile), then what the previous command showed: locked.",
        ["temp_unlocked", "expires_at"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="locked", reason="overdue")), "apply", "locked", 2),
            at(3600, "2026-03-02T07:00:00Z", "locked", False),
            cmd(
                sealed(
                    command(
                        seq=3,
                        state="temp_unlocked",
                        reason="agent visit",
                        issued_at="2026-03-02T07:00:00Z",
                        expires_at="2026-03-02T09:00:00Z",
                    )
                ),
                "apply",
                "temp_unlocked",
                3,
            ),
            at(3600, "2026-03-02T08:00:00Z", "temp_unlocked", False),
            at(7199, "2026-03-01T08:59:59Z", "temp_unlocked", False),
            at(7200, "2026-03-01T09:00:00Z", "locked", False),
            at(DAY, "2026-03-03T07:00:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "late_command_keeps_trusted_time",
        "A newer command held back (issued on day 1) and fed in on day 5 must not turn trusted time back: "
        "trusted time only moves forward. Its lease (day 8) warns from day 5 and locks at day 8 counted from "
        "the FIRST command's time, not from the late one's issued_at (which would give the held days back).",
        ["trusted time", "late delivery", "lease"],
        phone(),
        [
            cmd(sealed(command(seq=2, **_lease7)), "apply", "unlocked", 2),
            at(5 * DAY, "2026-03-07T06:00:00Z", "unlocked", True),
            cmd(
                sealed(
                    command(
                        seq=3,
                        issued_at="2026-03-03T06:00:00Z",
                        lease_until="2026-03-10T06:00:00Z",
                        lease_expiry_state="locked",
                        offline_lock_days=7,
                    )
                ),
                "apply",
                "unlocked",
                3,
            ),
            # Trusted time stays day 5 at the apply: day 7.5 now (with the late issued_at it would be day 3.5).
            at(2 * DAY + DAY // 2, "2026-03-03T06:00:00Z", "unlocked", True),
            at(3 * DAY, "2026-03-03T18:00:00Z", "locked", False),
        ],
    )
)

add(
    case(
        "temp_unlocked_no_previous",
        "A temporary unlock that is a new phone's first command (no command before it) ends in `reminder`, "
        "never a lock the server did not send, and that reminder is still bound by the unlock's own 7-day "
        "lease: warned from day 4, locked at day 7. A 2-day offline code then unlocks it until day 9.",
        ["temp_unlocked", "no previous command", "lease", "offline code"],
        phone(in_force=None, last_seq=0),
        [
            cmd(
                sealed(
                    command(
                        seq=1,
                        state="temp_unlocked",
                        reason="agent visit",
                        expires_at="2026-03-02T08:00:00Z",
                        **_lease7,
                    )
                ),
                "apply",
                "temp_unlocked",
                1,
            ),
            at(7199, "2026-03-02T07:59:59Z", "temp_unlocked", False),
            at(7200, "2026-01-01T00:00:00Z", "reminder", False),
            at(4 * DAY - 1, "2026-03-06T05:59:59Z", "reminder", False),
            at(4 * DAY, "2026-03-06T06:00:00Z", "reminder", True),
            at(7 * DAY, "2026-03-09T06:00:00Z", "locked", False),
            code(2, "unlocked", False),
            at(9 * DAY - 1, "2026-03-11T05:59:59Z", "unlocked", False),
            at(9 * DAY, "2026-03-11T06:00:00Z", "locked", False),
        ],
    )
)

_leased2 = sealed(command(seq=2, **_lease7))
add(
    case(
        "same_replay_keeps_trusted_time",
        "The command in force (a 7-day lease) replayed on day 5 is `same`, and does not turn trusted time back "
        "to its issued_at: the lease still warns and locks on day 7 counted from the first receipt. Replayed "
        "again once locked by its lease, the phone stays locked.",
        ["same", "replay", "trusted time", "lease"],
        phone(),
        [
            cmd(_leased2, "apply", "unlocked", 2),
            at(5 * DAY, "2026-03-07T06:00:00Z", "unlocked", True),
            cmd(_leased2, "same", "unlocked", 2),
            at(7 * DAY - 1, "2026-03-02T06:00:00Z", "unlocked", True),
            at(7 * DAY, "2026-03-02T06:00:00Z", "locked", False),
            at(9 * DAY, "2026-03-02T06:00:00Z", "locked", False),
            cmd(_leased2, "same", "unlocked", 2),
            at(9 * DAY, "2026-03-02T06:00:00Z", "locked", False),
        ],
    )
)

_MARS = "Mars/Olympus_Mons"
add(
    case(
        "unknown_time_zone",
        "A time_zone the phone does not know (a made-up name, an offset, an empty string, null) is never "
        "`malformed`: a lock and an unlock apply, and the phone uses UTC for the lock window. A lease ending "
        "Tuesday 04:00 UTC (09:30 in Colombo) with a 09:00-17:00 weekday window locks at 09:00 UTC; one "
        "ending 16:00 UTC (21:30 in Colombo) locks at once.",
        ["time_zone", "unknown zone", "UTC", "lock window"],
        phone(),
        [
            cmd(sealed(command(seq=2, state="locked", reason="overdue", time_zone=_MARS)), "apply", "locked", 2),
            cmd(
                sealed(command(seq=3, state="temp_unlocked", expires_at="2026-03-02T08:00:00Z", time_zone="")),
                "apply",
                "temp_unlocked",
                3,
            ),
            cmd(sealed(command(seq=4, time_zone=None)), "apply", "unlocked", 4),
            cmd(
                sealed(
                    command(
                        seq=5,
                        time_zone=_MARS,
                        lease_until="2026-03-03T04:00:00Z",
                        lease_expiry_state="locked",
                        lease_warning_days=0,
                        offline_lock_days=1,
                        lock_window=WEEKDAYS_9_TO_17,
                    )
                ),
                "apply",
                "unlocked",
                5,
            ),
            at(79_199, "2026-03-03T03:59:59Z", "unlocked", False),
            at(79_200, "2026-03-03T04:00:00Z", "reminder", True),
            at(97_199, "2026-03-03T08:59:59Z", "reminder", True),
            at(97_200, "2026-03-03T09:00:00Z", "locked", False),
            cmd(
                sealed(
                    command(
                        seq=6,
                        time_zone="+05:30",
                        issued_at="2026-03-03T10:00:00Z",
                        lease_until="2026-03-03T16:00:00Z",
                        lease_expiry_state="locked",
                        lease_warning_days=0,
                        offline_lock_days=1,
                        lock_window=WEEKDAYS_9_TO_17,
                    )
                ),
                "apply",
                "unlocked",
                6,
            ),
            at(21_599, "2026-03-03T15:59:59Z", "unlocked", False),
            at(21_600, "2026-03-03T16:00:00Z", "locked", False),
        ],
    )
)
