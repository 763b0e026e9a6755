"""Who may use the operator endpoints: staff users holding the Django permission each one names.

Reading (dead-letter lists and payloads, canary runs, queue figures) needs a
``view_*`` permission; anything that publishes or changes state (replay,
discard, bulk replay, starting a canary, revoking a task, pausing, resuming or
purging a queue) needs the ``change_*`` one. The
``operators`` group (``settings.OPS_OPERATORS_GROUP``, created by migration
``ops.0003``) holds all of them; ``manage.py create_api_token USER --staff``
puts the user in it. Being staff alone is not enough: a staff user without the
permission gets 403 and nothing changes.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

VIEW_DEAD_LETTERS = "ops.view_deadletter"
CHANGE_DEAD_LETTERS = "ops.change_deadletter"
VIEW_CANARY = "ops.view_canaryrun"
CHANGE_CANARY = "ops.change_canaryrun"
VIEW_FLEET = "ops.view_fleet"
# Revoke a task, pause, resume or purge a queue (apps/ops/fleet/control.py).
CHANGE_FLEET = "ops.change_fleet"

# Every permission of this app the operators group holds (migrations 0003 and 0005 grant exactly these).
OPERATOR_PERMISSIONS = (VIEW_DEAD_LETTERS, CHANGE_DEAD_LETTERS, VIEW_CANARY, CHANGE_CANARY, VIEW_FLEET, CHANGE_FLEET)


def operator_has(user: Any, permission: str) -> bool:
    """Staff, active, and holding ``permission`` (directly, through a group, or as superuser)."""
    return bool(user and user.is_authenticated and user.is_active and user.is_staff and user.has_perm(permission))


class _OperatorPermission(BasePermission):
    permission = ""
    message = "You do not have the operator permission this endpoint needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        return operator_has(request.user, self.permission)


class CanViewDeadLetters(_OperatorPermission):
    permission = VIEW_DEAD_LETTERS


class CanChangeDeadLetters(_OperatorPermission):
    permission = CHANGE_DEAD_LETTERS


class CanViewCanary(_OperatorPermission):
    permission = VIEW_CANARY


class CanRunCanary(_OperatorPermission):
    permission = CHANGE_CANARY


class CanViewFleet(_OperatorPermission):
    permission = VIEW_FLEET


class CanChangeFleet(_OperatorPermission):
    permission = CHANGE_FLEET
