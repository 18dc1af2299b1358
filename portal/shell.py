"""The staff UI shell's extension points.

``portal`` must not import the apps built on it, so each app registers its
navigation entries and home-page panels here from its ``AppConfig.ready``.
The shell shows an entry or panel only to users holding its right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from portal.models import User
from portal.permissions import Right, has_right


@dataclass(frozen=True)
class NavItem:
    order: int
    url_name: str
    label: str
    right: Right | None


@dataclass(frozen=True)
class HomePanel:
    """A block on the home page: ``template`` rendered with ``context(user)``."""

    order: int
    template: str
    right: Right
    context: Callable[[User], dict[str, Any]] = field(default=lambda user: {})
    roles: frozenset[str] | None = None


_nav: list[NavItem] = []
_panels: list[HomePanel] = []


def register_nav(item: NavItem) -> None:
    if item not in _nav:
        _nav.append(item)
        _nav.sort(key=lambda i: i.order)


def register_panel(panel: HomePanel) -> None:
    if panel not in _panels:
        _panels.append(panel)
        _panels.sort(key=lambda p: p.order)


def nav_for(user) -> list[NavItem]:
    return [i for i in _nav if i.right is None or has_right(user, i.right)]


def panels_for(user) -> list[tuple[str, dict]]:
    """(template, context) for each panel the user may see, in order."""
    return [
        (p.template, p.context(user))
        for p in _panels
        if has_right(user, p.right) and (p.roles is None or user.role in p.roles)
    ]
