"""The portal's own navigation entries and home panels."""

from portal.models import Role
from portal.permissions import Right
from portal.selectors import audit_events_for, organisations_overview
from portal.shell import HomePanel, NavItem, PageLink, register_link, register_nav, register_panel


def register() -> None:
    register_nav(NavItem(0, "portal:home", "Home", None))
    register_nav(NavItem(80, "portal:organisations", "Organisations", Right.MANAGE_ORGANISATIONS))
    register_nav(NavItem(85, "portal:settings", "Settings", Right.MANAGE_SETTINGS))
    register_nav(NavItem(86, "portal:webhooks", "Webhooks", Right.MANAGE_SETTINGS))
    register_nav(NavItem(90, "portal:audit", "Audit trail", Right.VIEW_AUDIT))
    register_link(PageLink("settings.tabs", 40, "portal:webhooks", "Webhooks", Right.MANAGE_SETTINGS))
    register_panel(
        HomePanel(
            10,
            "portal/panels/organisations.html",
            Right.MANAGE_ORGANISATIONS,
            lambda user: {"organisations": organisations_overview()},
        )
    )
    register_panel(
        HomePanel(
            90,
            "portal/panels/recent_audit.html",
            Right.VIEW_AUDIT,
            lambda user: {"events": audit_events_for(user)[:8]},
            roles=frozenset({Role.AUDITOR, Role.OPERATOR, Role.PROVIDER_ADMIN}),
        )
    )
