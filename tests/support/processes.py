"""The environment for a process a test starts (worker, relay, ASGI server, beat).

It points the child at this run's test database, RabbitMQ vhost and Redis
prefix. Call it after the test database exists (inside a test, or a fixture
that depends on ``db``/``transactional_db``) so the name is the test one.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def child_env(**overrides: str) -> dict[str, str]:
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings.test",
        TEST_RUN_ID=settings.TEST_RUN_ID,
        DATABASE_URL=(
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        CONTEXT_ENGINE_SKIP_DOTENV="1",
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env
