"""Navigation and home panels contributed by the money side."""

from portal.permissions import Right
from portal.shell import HomePanel, NavItem, register_nav, register_panel


def register() -> None:
    from payments.selectors import provider_overview

    register_nav(NavItem(30, "payments:contracts", "Contracts", Right.VIEW_FINANCE))
    register_panel(HomePanel(30, "payments/panels/overview.html", Right.VIEW_FINANCE, provider_overview))
