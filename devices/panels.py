"""Navigation and home panels contributed by the device registry."""

from devices.selectors import device_state_overview
from portal.models import Role
from portal.permissions import Right
from portal.shell import HomePanel, NavItem, PageLink, register_link, register_nav, register_panel


def register() -> None:
    register_nav(NavItem(20, "devices:list", "Devices", Right.VIEW_DEVICES))
    register_nav(NavItem(22, "devices:dead_letters", "Dead letters", Right.VIEW_DEVICES))
    register_link(PageLink("settings.tabs", 50, "devices:enrollment_tokens", "Enrolment tokens", Right.MANAGE_SETTINGS))
    register_panel(HomePanel(5, "devices/panels/lookup.html", Right.VIEW_DEVICES))
    register_panel(
        HomePanel(
            20,
            "devices/panels/states.html",
            Right.VIEW_DEVICES,
            device_state_overview,
            roles=frozenset({Role.PROVIDER_ADMIN, Role.AGENT, Role.FINANCE, Role.AUDITOR, Role.OPERATOR}),
        )
    )
