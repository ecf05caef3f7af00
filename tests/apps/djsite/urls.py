"""URLs of the test Django project."""

from django.urls import path

from tests.apps.djsite import views

urlpatterns = [
    path("hello/<str:name>", views.hello),
    path("numbers", views.numbers),
    path("announce", views.announce),
]
