"""Kept for the API modules' imports: the one client-address helper lives in ``portal.http``."""

from portal.http import client_ip

__all__ = ["client_ip"]
