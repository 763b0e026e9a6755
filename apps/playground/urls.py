from django.urls import path

from apps.playground import views

urlpatterns = [
    path("", views.page, name="playground"),
    path("playground.js", views.script, name="playground-js"),
    path("playground.css", views.stylesheet, name="playground-css"),
]
