from django.urls import path

from djproject.shop import views

urlpatterns = [
    path("order/", views.order),
    path("boom/", views.boom),
    path("leak-set/", views.leak_set),
    path("leak-show/", views.leak_show),
    path("session/", views.session),
]
