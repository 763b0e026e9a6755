"""Django admin's entry point for the ops app (autodiscovered): the dead-letter screens and the fleet page."""

from apps.ops.console import admin as console_admin  # noqa: F401 - registers the console, links the index
from apps.ops.deadletters import admin as deadletters_admin  # noqa: F401 - registers DeadLetter, TaskFailure, ...
from apps.ops.fleet import admin as fleet_admin  # noqa: F401 - registers the fleet page
