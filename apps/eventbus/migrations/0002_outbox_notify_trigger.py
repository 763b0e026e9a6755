"""NOTIFY eventbus_outbox on every insert into the outbox.

A statement-level trigger, so a 1000-row bulk insert sends one notification;
PostgreSQL delivers it at commit (never for a rolled-back transaction) and
folds identical notifications within one transaction. The relay LISTENs and
wakes at once, polling only as the fallback.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION eventbus_outbox_notify() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('eventbus_outbox', '');
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER eventbus_outbox_notify
AFTER INSERT ON eventbus_outboxmessage
FOR EACH STATEMENT EXECUTE FUNCTION eventbus_outbox_notify();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS eventbus_outbox_notify ON eventbus_outboxmessage;
DROP FUNCTION IF EXISTS eventbus_outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
