"""``python -m devices.agent``: run a simulated phone against a finlock server.

    python -m devices.agent run --server http://127.0.0.1:8000 --mqtt mqtt://127.0.0.1:1883 \\
        --imei 351234560000648 --token <enrollment token> --state-dir var/phone1 --html var/phone1.html
    python -m devices.agent status --state-dir var/phone1
    python -m devices.agent enter-code 123456789 --state-dir var/phone1
    python -m devices.agent factory-reset --state-dir var/phone1
    python -m devices.agent render --html screen.html --state-dir var/phone1
    python -m devices.agent enroll --server ... --imei ... --token ... --reenroll-code 7K2M-9QXD-4TNB-H3WE \\
        --state-dir var/phone1    # a phone that lost its protected storage, with a code from the provider

Exit status: 0 done, 1 refused (a rejected command, a refused code), 2 usage, 3 the
server or the state directory could not be used.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from devices.agent.client import ApiError, HttpTransport
from devices.agent.core import Agent, AgentError
from devices.agent.phone import Phone
from devices.agent.render import render_html, render_text
from devices.agent.rules import Outcome
from devices.agent.state import ProtectedState, StateError, write_text_atomic
from devices.agent.times import format_time

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
REENROLL_HELP = "a one-time re-enrolment code from the provider (only when the phone lost its device key)"


class ScreenPrinter:
    """Re-draws the screen (terminal, and the HTML file if asked) whenever it changes."""

    def __init__(self, html_path: Path | None, quiet: bool = False):
        self.html_path = html_path
        self.quiet = quiet
        self._lock = threading.Lock()  # MQTT messages arrive on another thread

    def __call__(self, agent: Agent) -> None:
        view = agent.view()
        with self._lock:
            if self.html_path is not None:
                write_text_atomic(self.html_path, render_html(view))
            if not self.quiet:
                print(render_text(view), flush=True)


def _say(message: str) -> None:
    print(f"[agent] {message}", file=sys.stderr, flush=True)


def _device_of(agent: Agent) -> str:
    enrolment = agent.state.enrolment
    return enrolment.device if enrolment is not None else "nothing"


def _outcome_line(outcome: Outcome) -> str:
    seq = f" seq {outcome.seq}" if outcome.seq is not None else ""
    state = f" {outcome.state}" if outcome.state else ""
    return f"{outcome.status}{seq}{state}" + (f": {outcome.reason}" if outcome.reason else "")


def _enroll_until_done(agent: Agent, args: argparse.Namespace, stop: threading.Event) -> bool:
    """Enrol, retrying while the server is unreachable; a refusal (bad token) is final."""
    if not (args.server and args.imei and args.token):
        raise AgentError("not enrolled yet: pass --server, --imei and --token")
    delay = 1.0
    while not stop.is_set():
        try:
            outcome = agent.enroll(args.server, args.imei, args.token, args.reenroll_code, imeis=_imeis(args))
        except ApiError as exc:
            if exc.status == 400:
                _say(REFUSED_HINT)
            if exc.status is not None and 400 <= exc.status < 500:
                raise
            _say(f"enrolment failed, retrying in {delay:.0f} s: {exc}")
            stop.wait(delay)
            delay = min(delay * 2, 60.0)
            continue
        _say(f"enrolled as {_device_of(agent)}; current command {_outcome_line(outcome)}")
        return True
    return False


def cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    printer = ScreenPrinter(args.html, quiet=args.quiet)
    agent = Agent(args.state_dir, transport=HttpTransport(timeout=args.timeout), on_change=printer)
    if not agent.enrolled and not _enroll_until_done(agent, args, stop):
        return EXIT_OK
    printer(agent)
    listener = None
    if args.mqtt:
        from devices.agent.mqtt import MqttListener  # noqa: PLC0415 - paho-mqtt is optional on a phone: only --mqtt needs it

        listener = MqttListener(agent, args.mqtt, on_outcome=lambda o: _say(f"push: {_outcome_line(o)}")).start()
        _say(f"listening on {listener.topic} at {listener.host}:{listener.port}")
    next_checkin = 0.0
    try:
        while not stop.is_set():
            agent.tick()
            if time.monotonic() >= next_checkin:
                next_checkin = time.monotonic() + args.checkin_every
                try:
                    outcome = agent.checkin()
                    if outcome.status != "duplicate":
                        _say(f"check-in: {_outcome_line(outcome)}")
                except ApiError as exc:
                    if exc.status == 401 and args.imei and args.token:
                        # The credential was revoked (or the server forgot us): enrol again.
                        _say("credential refused; enrolling again")
                        _enroll_until_done(agent, args, stop)
                    else:
                        _say(f"check-in failed: {exc}")
            if args.once:
                break
            stop.wait(1.0)
    finally:
        if listener is not None:
            listener.stop()
    return EXIT_OK


def _imeis(args: argparse.Namespace) -> list[str]:
    """Every IMEI of the phone: the one it enrols with and the other SIM slot's, if given."""
    return [imei for imei in (args.imei, args.imei2) if imei]


REFUSED_HINT = (
    "enrolment refused: check the IMEI and the token. A phone that enrolled before signs with the device key "
    "in its protected storage; if that storage was lost, the provider's staff issue a re-enrolment code "
    "(--reenroll-code)."
)


def cmd_enroll(args: argparse.Namespace) -> int:
    agent = Agent(args.state_dir, transport=HttpTransport(timeout=args.timeout))
    try:
        outcome = agent.enroll(args.server, args.imei, args.token, args.reenroll_code, imeis=_imeis(args))
    except ApiError as exc:
        if exc.status == 400:
            _say(REFUSED_HINT)
        raise
    print(f"enrolled as {_device_of(agent)}: {_outcome_line(outcome)}")
    return EXIT_OK if outcome.status != "rejected" else EXIT_REFUSED


def cmd_checkin(args: argparse.Namespace) -> int:
    agent = Agent(args.state_dir, transport=HttpTransport(timeout=args.timeout))
    outcome = agent.checkin()
    print(_outcome_line(outcome))
    return EXIT_OK if outcome.status != "rejected" else EXIT_REFUSED


def cmd_apply(args: argparse.Namespace) -> int:
    """Hand an envelope to the phone by hand, as if it arrived on a channel."""
    raw = sys.stdin.read() if args.envelope == "-" else Path(args.envelope).read_text(encoding="utf-8")
    outcome = Agent(args.state_dir).handle_envelope(raw, source="cli")
    print(_outcome_line(outcome))
    return EXIT_OK if outcome.status != "rejected" else EXIT_REFUSED


def cmd_status(args: argparse.Namespace) -> int:
    agent = Agent(args.state_dir)
    agent.tick()
    st, prot, phone = agent.state, agent.protected, agent.phone
    if args.json:
        print(json.dumps(_redacted({"agent": asdict(st), "protected": asdict(prot)}), indent=2))
        return EXIT_OK
    e = st.enrolment
    lines = [
        f"device:      {e.device if e else 'not enrolled'}",
        f"imei:        {', '.join(e.imeis or [e.imei]) if e else '-'}",
        f"server:      {(e.server_url or '-') if e else '-'}",
        f"mqtt topic:  {(e.mqtt_topic or '-') if e else '-'}",
        f"state:       {st.state}" + (f" until {st.expires_at}" if st.expires_at else ""),
        f"last seq:    {st.last_seq}" + (f" (not yet acknowledged: seq {st.unacked['seq']})" if st.unacked else ""),
        f"keys:        {_keys_line(phone)}",
        f"lease:       {_lease_line(agent)}",
        f"check-in:    {st.last_checkin_at or 'never'}",
        f"offline:     {_offline_line(prot, phone)}",
        f"device key:  {'kept in protected storage' if prot.device_key else 'none yet (made at the first enrolment)'}",
        f"user data:   {agent.user_data_dir} ({sum(1 for _ in agent.user_data_dir.rglob('*'))} entries, never deleted)",
    ]
    print("\n".join(lines))
    print(agent.render_text())
    if st.log:
        print("recent:")
        for entry in st.log[-args.log :]:
            seq = f" seq {entry['seq']}" if entry.get("seq") is not None else ""
            repeated = f" (x{entry['repeated']})" if entry.get("repeated") else ""
            print(
                f"  {entry.get('at')} {entry.get('source', '-')}: {entry.get('event')}{seq}"
                f" {entry.get('state') or ''} {entry.get('reason') or ''}{repeated}".rstrip()
            )
    return EXIT_OK


def _offline_line(prot: ProtectedState, phone: Phone | None) -> str:
    if phone is not None and phone.offline_released:
        return "released by a code"
    if not prot.offline.secret:
        return "not set up"
    until = phone.offline_until if phone is not None else None
    extra = f", usable until {format_time(until)} (trusted time)" if until else ""
    return f"ready (counter {prot.offline.last_count}{extra})"


def _keys_line(phone: Phone | None) -> str:
    if phone is None or not phone.trusted_keys:
        return "none trusted yet"
    return f"{', '.join(phone.trusted_key_ids)} (key statement {phone.key_statement_seq})"


def _lease_line(agent: Agent) -> str:
    view = agent.view()
    phone = agent.phone
    command = phone.command if phone is not None else None
    if not command or not command.get("lease_until"):
        return "none"
    line = f"until {command['lease_until']}, then {command.get('lease_expiry_state')}"
    if view.warning_at is not None:
        line += f" (takes effect {format_time(view.warning_at)})"
    return line + (", warning shown" if view.warning else "")


def _redacted(dump: dict) -> dict:
    # The offline secret mints unlock codes, the credential and the MQTT password impersonate
    # the phone: a status dump (pasted into a support ticket) must show none of them.
    for secret in ("credential", "mqtt_password"):
        if (dump["agent"].get("enrolment") or {}).get(secret):
            dump["agent"]["enrolment"][secret] = "<hidden>"
    if dump["protected"]["offline"].get("secret"):
        dump["protected"]["offline"]["secret"] = "<hidden>"
    if dump["protected"].get("device_key"):  # whoever holds it can enrol as this phone
        dump["protected"]["device_key"] = "<hidden>"
    return dump


def cmd_enter_code(args: argparse.Namespace) -> int:
    agent = Agent(args.state_dir)
    result = agent.enter_code(args.code)
    print(result.message)
    print(agent.render_text())
    return EXIT_OK if result.ok else EXIT_REFUSED


def cmd_factory_reset(args: argparse.Namespace) -> int:
    agent = Agent(args.state_dir)
    agent.factory_reset()
    print(
        "Factory reset (simulated): the agent's enrolment is wiped; the lock in force and your data are kept.\n"
        "The phone enrols again on its next `run` and gets its current state back."
    )
    print(agent.render_text())
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    agent = Agent(args.state_dir)
    agent.tick()
    if args.html:
        write_text_atomic(args.html, agent.render_html())
        print(f"wrote {args.html}")
    else:
        print(agent.render_text())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("FINLOCK_AGENT_DIR"),
        required=not os.environ.get("FINLOCK_AGENT_DIR"),
        help="the phone's storage (default: $FINLOCK_AGENT_DIR)",
    )
    network = argparse.ArgumentParser(add_help=False)
    network.add_argument("--timeout", type=float, default=15.0, help="seconds per HTTP call (default 15)")

    parser = argparse.ArgumentParser(prog="python -m devices.agent", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common, network], help="enrol if needed, listen, check in, show the screen")
    run.add_argument("--server", help="finlock base URL, e.g. http://127.0.0.1:8000 (needed to enrol)")
    run.add_argument("--mqtt", help="broker URL, e.g. mqtt://127.0.0.1:1883 (omit for check-ins only)")
    run.add_argument("--imei", help="this phone's IMEI (needed to enrol)")
    run.add_argument("--imei2", help="the IMEI of the second SIM slot of a dual-SIM phone")
    run.add_argument("--token", help="the enrolment token from the provider (needed to enrol)")
    run.add_argument("--reenroll-code", help=REENROLL_HELP)
    run.add_argument("--checkin-every", type=float, default=60.0, metavar="SECONDS", help="default 60")
    run.add_argument("--html", type=Path, help="also keep this HTML file showing the screen")
    run.add_argument("--once", action="store_true", help="enrol, check in once, render, exit")
    run.add_argument("--quiet", action="store_true", help="do not print the screen on changes")
    run.set_defaults(func=cmd_run)

    enroll = sub.add_parser("enroll", parents=[common, network], help="enrol with the server once")
    enroll.add_argument("--server", required=True)
    enroll.add_argument("--imei", required=True)
    enroll.add_argument("--imei2", help="the IMEI of the second SIM slot of a dual-SIM phone")
    enroll.add_argument("--token", required=True)
    enroll.add_argument("--reenroll-code", help=REENROLL_HELP)
    enroll.set_defaults(func=cmd_enroll)

    sub.add_parser("checkin", parents=[common, network], help="check in once").set_defaults(func=cmd_checkin)

    status = sub.add_parser("status", parents=[common], help="print the state and the screen")
    status.add_argument("--json", action="store_true", help="the raw state (offline secret hidden)")
    status.add_argument("--log", type=int, default=10, metavar="N", help="recent log entries to show (default 10)")
    status.set_defaults(func=cmd_status)

    code = sub.add_parser("enter-code", parents=[common], help="type an offline unlock code (OpenPAYGO)")
    code.add_argument("code")
    code.set_defaults(func=cmd_enter_code)

    sub.add_parser("factory-reset", parents=[common], help="simulate a factory reset").set_defaults(
        func=cmd_factory_reset
    )

    render = sub.add_parser("render", parents=[common], help="print the screen, or write it as HTML")
    render.add_argument("--html", type=Path, help="write a 360x800 HTML page here")
    render.set_defaults(func=cmd_render)

    apply = sub.add_parser("apply", parents=[common], help="apply an envelope from a file ('-' for stdin)")
    apply.add_argument("envelope")
    apply.set_defaults(func=cmd_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ApiError, AgentError, StateError, OSError, ValueError) as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
