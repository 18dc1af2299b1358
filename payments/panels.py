"""Navigation and home panels contributed by the money side."""

from payments.contracts.selectors import provider_overview
from payments.ledger.selectors import unmatched_payments_panel
from portal.models import Role
from portal.permissions import Right
from portal.shell import HomePanel, NavItem, PageLink, register_link, register_nav, register_panel


def register() -> None:
    register_nav(NavItem(30, "payments:contracts", "Contracts", Right.VIEW_FINANCE))
    register_nav(NavItem(32, "payments:payments", "Payments", Right.VIEW_FINANCE))
    register_nav(NavItem(35, "locks:paid_still_locked", "Paid, still locked", Right.VIEW_FINANCE))
    register_nav(NavItem(36, "payments:statements", "Statements", Right.IMPORT_STATEMENTS))
    register_nav(NavItem(83, "locks:screen", "Lock screen", Right.MANAGE_SETTINGS))
    register_nav(NavItem(84, "locks:policy", "Lock policy", Right.MANAGE_SETTINGS))
    register_nav(NavItem(85, "locks:channels", "Payment channels", Right.MANAGE_SETTINGS))
    register_link(PageLink("settings.tabs", 10, "locks:screen", "Lock screen", Right.MANAGE_SETTINGS))
    register_link(PageLink("settings.tabs", 20, "locks:channels", "Payment channels", Right.MANAGE_SETTINGS))
    register_link(PageLink("settings.tabs", 30, "locks:policy", "Lock policy", Right.MANAGE_SETTINGS))
    register_link(
        PageLink(
            "device.financing",
            10,
            "payments:contracts",
            "Contracts for this device →",
            Right.VIEW_FINANCE,
            "device={pk}",
        )
    )
    register_panel(HomePanel(30, "payments/panels/overview.html", Right.VIEW_FINANCE, provider_overview))
    register_panel(
        HomePanel(
            32,
            "payments/panels/unmatched.html",
            Right.RECORD_PAYMENTS,
            unmatched_payments_panel,
            roles=frozenset({Role.FINANCE}),
        )
    )
