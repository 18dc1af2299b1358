from django.urls import path

from payments import views

app_name = "locks"

urlpatterns = [
    path("policy/", views.lock_policy, name="policy"),
    path("screen/", views.lock_screen_texts, name="screen"),
    path("screen/<str:language>/", views.lock_screen_texts, name="screen_language"),
    path("screen/<str:language>/preview/", views.lock_screen_preview, name="screen_preview"),
    path("channels/", views.payment_channel_list, name="channels"),
    path("channels/new/", views.payment_channel_new, name="channel_new"),
    path("channels/<int:pk>/", views.payment_channel_edit, name="channel_edit"),
    path("channels/<int:pk>/move/", views.payment_channel_move_view, name="channel_move"),
    path(
        "channels/<int:pk>/deactivate/", views.payment_channel_active_view, {"active": False}, name="channel_deactivate"
    ),
    path("channels/<int:pk>/activate/", views.payment_channel_active_view, {"active": True}, name="channel_activate"),
    path("paid-still-locked/", views.paid_still_locked_list, name="paid_still_locked"),
]
