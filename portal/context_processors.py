from portal.shell import nav_for


def navigation(request):
    """Navigation entries the signed-in user may use (hidden ones would be 403 anyway)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": []}
    return {"nav": nav_for(user)}
