from django.urls import path

from . import fleetlock, views

urlpatterns = [
    path("locks/", views.lock_list, name="lock-list"),
    path("locks/fleetlock/rotate", views.fleetlock_rotate, name="fleetlock-rotate"),
    path("groups/<int:pk>/locks/", views.group_locks, name="group-locks"),
    path("groups/<int:pk>/locks/unlock", views.group_unlock, name="group-unlock"),
    path("groups/<int:pk>/locks/set-max", views.group_set_max, name="group-set-max"),
    path("fleetlock/<str:secret>/v1/pre-reboot", fleetlock.pre_reboot, name="fleetlock-pre-reboot"),
    path("fleetlock/<str:secret>/v1/steady-state", fleetlock.steady_state, name="fleetlock-steady-state"),
]
