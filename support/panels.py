"""Navigation contributed by the people's side (registered from ``SupportConfig.ready``)."""

from portal.permissions import Right
from portal.shell import NavItem, register_nav


def register() -> None:
    register_nav(NavItem(25, "console:search", "Console", Right.VIEW_FINANCE))
    register_nav(NavItem(40, "support:cases", "Cases", Right.MANAGE_CASES))
    # Two entries, one page: reviewers (provider staff) and uploaders (technicians) hold disjoint rights.
    register_nav(NavItem(42, "support:reviews", "Proof reviews", Right.APPROVE_UNLOCK))
    register_nav(NavItem(42, "support:reviews", "Proof reviews", Right.UPLOAD_PROOF))
    register_nav(NavItem(44, "support:unlocks", "Unlock requests", Right.REQUEST_UNLOCK))
