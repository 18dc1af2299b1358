"""Navigation contributed by the people's side (registered from ``SupportConfig.ready``)."""

from portal.permissions import Right
from portal.shell import NavItem, PageLink, register_link, register_nav


def register() -> None:
    register_nav(NavItem(25, "console:search", "Console", Right.VIEW_FINANCE))
    register_nav(NavItem(40, "support:cases", "Cases", Right.MANAGE_CASES))
    # Two entries, one page: reviewers (provider staff) and uploaders (technicians) hold disjoint rights.
    register_nav(NavItem(42, "support:reviews", "Proof reviews", Right.APPROVE_UNLOCK))
    register_nav(NavItem(42, "support:reviews", "Proof reviews", Right.UPLOAD_PROOF))
    register_nav(NavItem(44, "support:unlocks", "Unlock requests", Right.REQUEST_UNLOCK))
    register_link(
        PageLink(
            "device.enrolment",
            10,
            "support:unlock_new",
            "Ask for a new offline-code key →",
            Right.REQUEST_UNLOCK,
            query="device={pk}&kind=rekey",
            note="(for a phone that lost its own; another person approves)",
            when=lambda device: device.enrolled_at is not None,
        )
    )
