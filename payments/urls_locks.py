from django.urls import path

from payments.ledger import views as ledger
from payments.locks import views as locks

app_name = "locks"

urlpatterns = [
    path("policy/", locks.lock_policy, name="policy"),
    path("screen/", locks.lock_screen_texts, name="screen"),
    path("screen/<str:language>/", locks.lock_screen_texts, name="screen_language"),
    path("screen/<str:language>/preview/", locks.lock_screen_preview, name="screen_preview"),
    # Payment channels are the ledger's, set up beside the lock screen that lists them.
    path("channels/", ledger.payment_channel_list, name="channels"),
    path("channels/new/", ledger.payment_channel_new, name="channel_new"),
    path("channels/<int:pk>/", ledger.payment_channel_edit, name="channel_edit"),
    path("channels/<int:pk>/move/", ledger.payment_channel_move_view, name="channel_move"),
    path(
        "channels/<int:pk>/deactivate/",
        ledger.payment_channel_active_view,
        {"active": False},
        name="channel_deactivate",
    ),
    path("channels/<int:pk>/activate/", ledger.payment_channel_active_view, {"active": True}, name="channel_activate"),
    path("paid-still-locked/", locks.paid_still_locked_list, name="paid_still_locked"),
]
