"""The lock screen, as a phone would draw it: a 40-column terminal box and a 360x800 HTML page.

The owner stuck on this screen must learn who locked the phone, how much is overdue, exactly
how to pay, whom to call, and that their data is safe, and must always be able to make an
emergency call. What it says (``Content``, from the command's ``screen``, with the labels and
their built-in English) is ``devices.agent.screen``; this module draws it.
"""

from __future__ import annotations

import html
import unicodedata

from devices.agent.screen import (
    EMERGENCY_NUMBER,
    LABELS,
    Content,
    PaymentChannel,
    ScreenView,
    callable_numbers,
    content,
    dial_string,
)
from devices.agent.times import human_time, local_time, zone_named

__all__ = ["WIDTH", "ScreenView", "render_html", "render_text"]

WIDTH = 40


# --- terminal ------------------------------------------------------------------------------


def _width(text: str) -> int:
    """Columns a string takes in a terminal (combining marks take none, wide CJK takes two)."""
    total = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap by display width; words longer than a line are cut."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        while _width(word) > width:
            if line:
                lines.append(line)
                line = ""
            cut = 0
            while cut < len(word) and _width(word[: cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        if not word:
            continue
        candidate = f"{line} {word}" if line else word
        if _width(candidate) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


class _Box:
    """A box drawn with line characters, ``WIDTH`` columns wide including the borders."""

    inner = WIDTH - 4

    def __init__(self) -> None:
        self.lines = ["┌" + "─" * (WIDTH - 2) + "┐"]

    def text(self, text: str, indent: int = 0) -> None:
        if not text:
            return
        pad = " " * indent
        for part in _wrap(text, self.inner - indent):
            self.lines.append("│ " + pad + part + " " * (self.inner - indent - _width(part)) + " │")

    def item(self, label: str, value: str, indent: int = 0) -> None:
        if value:
            self.text(f"{label}: {value}", indent=indent)

    def blank(self) -> None:
        self.lines.append("│" + " " * (WIDTH - 2) + "│")

    def rule(self) -> None:
        self.lines.append("├" + "─" * (WIDTH - 2) + "┤")

    def close(self) -> str:
        return "\n".join([*self.lines, "└" + "─" * (WIDTH - 2) + "┘"])


def _until(view: ScreenView) -> str:
    return human_time(view.expires_at) if view.expires_at else ""


def _headline(c: Content, state: str) -> str:
    key = f"state_{state}"
    return c.label(key) if key in LABELS else state


def _unlocked(c: Content, view: ScreenView) -> str:
    how = c.label("by_offline_code" if view.offline_unlock else "by_provider")
    if view.expires_at:
        return c.label("unlocked_until", how=how, until=_until(view))
    return c.label("unlocked_how", how=how)


def _lease_lines(c: Content, view: ScreenView) -> list[str]:
    """The offline lease, in words: since when the server is silent; what happens when, and how to avoid it.

    Times are local to the command's zone with the UTC offset (the owner reads the clock on
    the wall; the offset makes it unambiguous). On the plain status screen the ways to pay
    and the hotline are listed too: the reminder and lock screens show them already.
    """
    zone = zone_named(view.time_zone)
    lines = []
    if view.offline_since is not None:
        lines.append(c.label("offline_since", since=local_time(view.offline_since, zone)))
    if view.warning and view.warning_at is not None:
        key = "lease_warning_lock" if view.warning_state == "locked" else "lease_warning_reminder"
        lines.append(c.label(key, when=local_time(view.warning_at, zone)))
        lines.append(c.label("lease_how_to_avoid"))
        if view.state not in ("reminder", "locked"):
            lines.extend(f"{c.label('pay')}: {', '.join(_pay_line(c, ch))}" for ch in c.channels)
            if c.hotlines:
                lines.append(f"{c.label('hotline')}: {', '.join(c.hotlines)}")
    return lines


def _pay_line(c: Content, ch: PaymentChannel) -> list[str]:
    account = c.label("pay_account", account=ch.account) if ch.account else ""
    return [p for p in (ch.name, account, ch.reference) if p]


def render_text(view: ScreenView) -> str:
    """The screen as text for a terminal: a box 40 columns wide, wrapped, never cut off."""
    c = content(view)
    box = _Box()
    if view.state == "locked":
        _text_locked(box, c)
    elif view.state == "reminder":
        _text_reminder(box, c)
    else:
        _text_status(box, c, view)
    lease = _lease_lines(c, view)
    if lease:
        box.rule()
        for line in lease:
            box.text(line)
    box.rule()
    if view.state == "locked" and c.allowed:
        box.item(c.label("calls_allowed"), ", ".join(c.allowed))
    box.text(f"[ {c.label('emergency_call')} {EMERGENCY_NUMBER} ]")
    return box.close()


def _text_locked(box: _Box, c: Content) -> None:
    box.text(c.label("state_locked"))
    box.text(c.title or c.label("default_title"))
    box.blank()
    box.text(c.body or c.label("default_body"))
    box.blank()
    box.item(c.label("locked_by"), c.provider)
    box.item(c.label("amount_overdue"), c.amount)
    box.item(c.label("overdue_since"), c.overdue_since)
    box.item(c.label("contract"), c.contract)
    box.item(c.label("imei"), c.imei)
    if c.channels:
        box.rule()
        box.text(c.label("how_to_pay").upper())
        for ch in c.channels:
            box.text("* " + (f"{ch.name} ({ch.kind})" if ch.kind else ch.name))
            box.item(c.label("account"), ch.account, indent=2)
            box.item(c.label("reference"), ch.reference, indent=2)
            box.text(ch.instructions, indent=2)
    _text_help(box, c)
    box.rule()
    box.text(c.data_kept)
    box.blank()
    box.text(c.reset_warning)
    if c.offline_hint:
        box.blank()
        box.text(c.offline_hint)


def _text_help(box: _Box, c: Content) -> None:
    if not (c.hotlines or c.email or c.website or c.centers or c.fallback_name or c.fallback_hotlines):
        return
    box.rule()
    box.text(c.label("help").upper())
    box.item(c.label("hotline"), ", ".join(c.hotlines))
    box.item(c.label("email"), c.email)
    box.item(c.label("website"), c.website)
    if c.centers:
        box.text(c.label("service_centers_bring"))
        for sc in c.centers:
            box.text("* " + ", ".join(p for p in (sc.name, sc.phone, sc.website) if p))
    fallback = [", ".join(c.fallback_hotlines), c.fallback_email, c.fallback_website]
    if c.fallback_name or any(fallback):
        who = c.provider or c.label("your_provider")
        box.text(c.label("cannot_reach", provider=who) + " " + ", ".join(p for p in [c.fallback_name, *fallback] if p))


def _text_reminder(box: _Box, c: Content) -> None:
    box.text(c.label("state_reminder").upper())
    box.text(c.title)
    box.text(c.body)
    box.item(c.label("amount_due"), c.amount)
    box.item(c.label("contract"), c.contract)
    for ch in c.channels:
        box.item(c.label("pay"), ", ".join(_pay_line(c, ch)))
    box.item(c.label("hotline"), ", ".join(c.hotlines))
    box.blank()
    box.text(c.label("works_normally"))


def _text_status(box: _Box, c: Content, view: ScreenView) -> None:
    box.text(_headline(c, view.state))
    if view.state == "temp_unlocked":
        box.text(_unlocked(c, view))
        box.item(c.label("amount_overdue"), c.amount)
        box.item(c.label("hotline"), ", ".join(c.hotlines))
    elif view.state == "released":
        box.text(c.label("released_note"))
    if not view.enrolled:
        box.text(c.label("not_enrolled"))


# --- HTML ----------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
html,body{margin:0;padding:0}
body{width:360px;height:800px;overflow:hidden;position:relative;background:#000;color:#fff;
 font:18px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
main{position:absolute;top:0;left:0;right:0;bottom:96px;overflow-y:auto;padding:20px 20px 12px}
h1{font-size:26px;line-height:1.2;margin:8px 0 12px}
h2{font-size:15px;letter-spacing:.08em;text-transform:uppercase;color:#bdbdbd;margin:22px 0 8px}
p{margin:0 0 10px}
.badge{display:inline-block;background:#fff;color:#000;font-weight:800;font-size:14px;
 letter-spacing:.1em;padding:3px 10px;border-radius:4px}
.amount{font-size:38px;font-weight:800;line-height:1.1;color:#ffd54f;margin:4px 0}
.label{color:#bdbdbd;font-size:15px}
.facts div{margin:0 0 6px}
.value{font-weight:700}
.channel{border:1px solid #616161;border-radius:10px;padding:10px 12px;margin:0 0 10px}
.channel .ref{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:20px;font-weight:700;
 color:#ffd54f;word-break:break-all}
a{color:#90caf9}
a.call{display:block;text-align:center;font-size:26px;font-weight:800;color:#000;background:#ffd54f;
 border-radius:12px;padding:12px;margin:0 0 8px;text-decoration:none}
.notice{border-left:4px solid #ffd54f;padding-left:10px;font-size:16px}
.small{font-size:15px;color:#e0e0e0}
.banner{background:#ffd54f;color:#000;border-radius:14px;padding:14px 16px}
.banner a,.banner .small{color:#000}
.banner .amount{color:#000;font-size:30px}
.banner h1{font-size:22px}
.status{margin-top:160px;text-align:center}
.status .state{font-size:24px;font-weight:800}
footer{position:absolute;left:0;right:0;bottom:0;height:96px;padding:14px 20px;background:#000;
 border-top:1px solid #424242}
a.emergency{display:block;text-align:center;background:#c62828;color:#fff;font-size:24px;font-weight:800;
 padding:16px;border-radius:14px;text-decoration:none}
"""


def _e(value: str) -> str:
    return html.escape(value, quote=True)


def _tel(number: str, cls: str = "") -> str:
    dial = dial_string(number)
    if not dial:
        return _e(number)
    attr = f' class="{cls}"' if cls else ""
    return f'<a{attr} href="tel:{_e(dial)}">{_e(number)}</a>'


def _number(number: str, c: Content) -> str:
    """A number as a ``tel:`` link when the locked phone may dial it, else as text to note down."""
    return _tel(number) if dial_string(number) in callable_numbers(c) else _e(number)


def _fact(label: str, value: str) -> str:
    if not value:
        return ""
    return f'<div><span class="label">{_e(label)}</span><br><span class="value">{_e(value)}</span></div>'


def render_html(view: ScreenView) -> str:
    """A self-contained page at phone size: no scripts, no external resources, all values escaped."""
    c = content(view)
    if view.state == "locked":
        main = _html_locked(c)
        title = c.title or c.label("default_title")
    elif view.state == "reminder":
        main = _html_reminder(c)
        title = c.title or c.label("state_reminder")
    else:
        main = _html_status(c, view)
        title = _headline(c, view.state)
    lease = _lease_lines(c, view)
    if lease:
        main += '\n<div class="notice" id="lease-warning" role="alert">' + "".join(f"<p>{_e(x)}</p>" for x in lease)
        main += "</div>"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{_e(c.language)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=360">\n'
        # The page may load nothing from anywhere: a locked phone has no network to spare.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f'<body data-state="{_e(view.state)}">\n<main>\n{main}\n</main>\n'
        '<footer><a class="emergency" id="emergency-call" '
        f'href="tel:{EMERGENCY_NUMBER}">{_e(c.label("emergency_call"))}</a></footer>\n'
        "</body>\n</html>\n"
    )


def _html_locked(c: Content) -> str:
    out = [f'<span class="badge">{_e(c.label("state_locked"))}</span>']
    out.append(f"<h1>{_e(c.title or c.label('default_title'))}</h1>")
    out.append(f"<p>{_e(c.body or c.label('default_body'))}</p>")
    if c.amount:
        out.append(f'<div class="label">{_e(c.label("amount_overdue"))}</div>')
        out.append(f'<div class="amount" id="amount">{_e(c.amount)}</div>')
    facts = [
        _fact(c.label("overdue_since"), c.overdue_since),
        _fact(c.label("locked_by"), c.provider),
        _fact(c.label("contract_number_quote"), c.contract),
        _fact(c.label("imei"), c.imei),
    ]
    out.append('<div class="facts">' + "".join(facts) + "</div>")
    if c.hotlines:
        out.append(f"<h2>{_e(c.label('call_hotline'))}</h2>")
        out.extend(_tel(n, "call") for n in c.hotlines)
    if c.channels:
        out.append(f"<h2>{_e(c.label('how_to_pay'))}</h2>")
        out.extend(_html_channel(c, ch) for ch in c.channels)
    out.extend(_html_contacts(c))
    out.extend(_html_centers(c))
    out.extend(_html_fallback(c))
    out.append(f"<h2>{_e(c.label('your_data'))}</h2>")
    out.append(f'<p class="notice" id="data-kept">{_e(c.data_kept)}</p>')
    out.append(f'<p class="notice" id="reset-warning">{_e(c.reset_warning)}</p>')
    if c.offline_hint:
        out.append(f'<p class="small" id="offline-hint">{_e(c.offline_hint)}</p>')
    if c.allowed:
        out.append(f"<h2>{_e(c.label('calls_allowed_while_locked'))}</h2>")
        out.append('<p class="small">' + " · ".join(_tel(n) for n in c.allowed) + "</p>")
    return "\n".join(out)


def _html_channel(c: Content, ch: PaymentChannel) -> str:
    parts = [f'<div class="value">{_e(ch.name)}</div>']
    if ch.kind:
        parts.append(f'<div class="small">{_e(ch.kind)}</div>')
    if ch.account:
        parts.append(f'<div class="label">{_e(c.label("account"))}</div><div class="ref">{_e(ch.account)}</div>')
    if ch.reference:
        parts.append(f'<div class="label">{_e(c.label("reference"))}</div><div class="ref">{_e(ch.reference)}</div>')
    if ch.instructions:
        parts.append(f'<div class="small">{_e(ch.instructions)}</div>')
    return '<div class="channel">' + "".join(parts) + "</div>"


def _html_contacts(c: Content) -> list[str]:
    contacts = []
    if c.email:
        contacts.append(_fact(c.label("email"), c.email))
    if c.website:
        contacts.append(_fact(c.label("website"), c.website))
    if not contacts:
        return []
    return [f"<h2>{_e(c.label('other_contacts'))}</h2>", '<div class="facts">' + "".join(contacts) + "</div>"]


def _html_centers(c: Content) -> list[str]:
    if not c.centers:
        return []
    out = [f"<h2>{_e(c.label('service_centers'))}</h2>", f'<p class="small">{_e(c.label("bring_proof"))}</p>']
    for sc in c.centers:
        bits = [f'<span class="value">{_e(sc.name)}</span>'] if sc.name else []
        if sc.phone:
            bits.append(_number(sc.phone, c))
        if sc.website:
            bits.append(_e(sc.website))
        out.append('<p class="small">' + "<br>".join(bits) + "</p>")
    return out


def _html_fallback(c: Content) -> list[str]:
    if not (c.fallback_name or c.fallback_hotlines or c.fallback_email or c.fallback_website):
        return []
    who = c.provider or c.label("your_provider")
    bits = [f'<span class="value">{_e(c.fallback_name)}</span>'] if c.fallback_name else []
    bits.extend(_number(n, c) for n in c.fallback_hotlines)
    bits.extend(_e(x) for x in (c.fallback_email, c.fallback_website) if x)
    return [f"<h2>{_e(c.label('cannot_reach', provider=who))}</h2>", '<p class="small">' + "<br>".join(bits) + "</p>"]


def _html_reminder(c: Content) -> str:
    out = ['<div class="banner" role="status">']
    out.append(f'<div class="badge">{_e(c.label("state_reminder"))}</div>')
    if c.title:
        out.append(f"<h1>{_e(c.title)}</h1>")
    if c.body:
        out.append(f"<p>{_e(c.body)}</p>")
    if c.amount:
        out.append(f'<div class="amount" id="amount">{_e(c.amount)}</div>')
    if c.contract:
        out.append(f"<p>{_e(c.label('contract'))} {_e(c.contract)}</p>")
    for ch in c.channels:
        pay = ", ".join(_e(p) for p in _pay_line(c, ch))
        out.append(f'<p class="small">{_e(c.label("pay"))}: {pay}</p>')
    hotline = _e(c.label("hotline"))
    out.extend(f"<p>{hotline}: {_tel(n)}</p>" for n in c.hotlines)
    out.append("</div>")
    out.append(f'<p class="status small">{_e(c.label("works_normally"))}</p>')
    return "\n".join(out)


def _html_status(c: Content, view: ScreenView) -> str:
    out = ['<div class="status">']
    out.append(f'<div class="state">{_e(_headline(c, view.state))}</div>')
    if view.state == "temp_unlocked":
        out.append(f'<p class="small">{_e(_unlocked(c, view))}</p>')
        if c.amount:
            out.append(f'<p class="small">{_e(c.label("amount_overdue"))}: {_e(c.amount)}</p>')
        hotline = _e(c.label("hotline"))
        out.extend(f'<p class="small">{hotline}: {_tel(n)}</p>' for n in c.hotlines)
    elif view.state == "released":
        out.append(f'<p class="small">{_e(c.label("released_note"))}</p>')
    if not view.enrolled:
        out.append(f'<p class="small">{_e(c.label("not_enrolled"))}</p>')
    out.append("</div>")
    return "\n".join(out)
