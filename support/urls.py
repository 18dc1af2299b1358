from django.urls import path

from support import views

app_name = "support"

urlpatterns = [
    path("cases/", views.case_list, name="cases"),
    path("cases/new/", views.case_new, name="case_new"),
    path("cases/<int:pk>/", views.case_detail, name="case"),
    path("cases/<int:pk>/note/", views.case_note, name="case_note"),
    path("cases/<int:pk>/assign/", views.case_assign, name="case_assign"),
    path("cases/<int:pk>/verify/", views.case_verify, name="case_verify"),
    path("cases/<int:pk>/resolve/", views.case_resolve, name="case_resolve"),
    path("reviews/", views.review_list, name="reviews"),
    path("reviews/new/", views.review_new, name="review_new"),
    path("reviews/<int:pk>/", views.review_detail, name="review"),
    path("reviews/<int:pk>/decide/", views.review_decide, name="review_decide"),
    path("reviews/files/<int:pk>/", views.review_file, name="review_file"),
    path("unlocks/", views.unlock_list, name="unlocks"),
    path("unlocks/new/", views.unlock_new, name="unlock_new"),
    path("unlocks/<int:pk>/", views.unlock_detail, name="unlock"),
    path("unlocks/<int:pk>/approve/", views.unlock_approve, name="unlock_approve"),
    path("unlocks/<int:pk>/reject/", views.unlock_reject, name="unlock_reject"),
]
