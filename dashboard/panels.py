"""Navigation contributed by the dashboard (registered from ``DashboardConfig.ready``)."""

from portal.permissions import Right
from portal.shell import NavItem, register_nav


def register() -> None:
    register_nav(NavItem(38, "dashboard:home", "Dashboard", Right.VIEW_FINANCE))
