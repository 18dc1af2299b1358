"""The staff UI shell's extension points.

``portal`` must not import the apps built on it, and no app names an app above it, so each app
registers here, from its ``AppConfig.ready``, its navigation entries, its home-page panels and the
links it adds to pages other apps own (``PageLink``: the settings page's tabs, the device page's
actions). The shell shows an entry, panel or link only to users holding its right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse

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


@dataclass(frozen=True)
class PageLink:
    """A link an app adds to a page another app owns: ``url_name`` plus ``query`` (formatted with the object's pk).

    ``place`` names where on which page (``"settings.tabs"``, ``"device.enrolment"``, ``"device.financing"``);
    ``when`` decides from the page's object whether the link applies (a rekey only for an enrolled phone).
    """

    place: str
    order: int
    url_name: str
    label: str
    right: Right | None
    query: str = ""
    note: str = ""
    when: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class ShownLink:
    url: str
    label: str
    note: str


_links: list[PageLink] = []


def register_link(link: PageLink) -> None:
    if link not in _links:
        _links.append(link)
        _links.sort(key=lambda item: (item.place, item.order))


def links_for(place: str, user: User, obj: Any = None) -> list[ShownLink]:
    """The links registered for ``place`` that ``user`` may follow, for the page's object ``obj``."""
    shown = []
    for link in _links:
        if link.place != place or (link.right is not None and not has_right(user, link.right)):
            continue
        if link.when is not None and not link.when(obj):
            continue
        url = reverse(link.url_name)
        if link.query:
            url += "?" + link.query.format(pk=getattr(obj, "pk", ""))
        shown.append(ShownLink(url=url, label=link.label, note=link.note))
    return shown
