"""``python manage.py run_job NAME [--param key=value ...]``: run a batch job now, with a progress bar.

Runs in this process (not through a queue), under the same rules as a
scheduled run: one run per job at a time, and a run whose process died is
resumed from its checkpoint when started again with the same parameters.
``--list`` prints the jobs and their parameters. The last line of output is
the finished run as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.batch.jobs import job_execute, job_get, job_names
from apps.batch.models import JobRun
from apps.common.exceptions import ApplicationError


class Command(BaseCommand):
    help = "Run a batch job by name, with a progress bar."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", help="job name (see --list)")
        parser.add_argument(
            "--param",
            "-p",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a job parameter; repeat for several",
        )
        parser.add_argument("--list", action="store_true", help="list the jobs and their parameters")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            for name in job_names():
                job = job_get(name=name)
                self.stdout.write(f"{name} [{job.queue}]: {job.description}")
                for key, param in job.all_params().items():
                    self.stdout.write(f"    {key} ({param.type.__name__}, default {param.default!r}) {param.help}")
            return
        if not options["name"]:
            raise CommandError("Name a job, or use --list.")
        params: dict[str, str] = {}
        for item in options["param"]:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise CommandError(f"--param takes KEY=VALUE, got {item!r}.")
            params[key.strip()] = value
        bar = None

        def on_progress(run: JobRun) -> None:
            nonlocal bar
            if options["no_progress"]:
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(
                    total=run.progress_total,
                    initial=run.progress_done,
                    desc=run.job_name,
                    unit="item",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            bar.total = run.progress_total
            bar.n = run.progress_done
            bar.refresh()

        try:
            run = job_execute(name=options["name"], params=params, trigger="manual", on_progress=on_progress)
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {json.dumps(exc.details, default=str)}") from exc
        finally:
            if bar is not None:
                bar.close()
        self.stdout.write(
            json.dumps(
                {
                    "id": str(run.id),
                    "job_name": run.job_name,
                    "status": run.status,
                    "done": run.progress_done,
                    "total": run.progress_total,
                    "resume_count": run.resume_count,
                    "result": run.result,
                },
                default=str,
            )
        )
