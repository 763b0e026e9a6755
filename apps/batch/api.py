"""Staff endpoints: job runs and activity stats."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.batch import selectors
from apps.batch.jobs import job_names_locked
from apps.batch.models import JobRun
from apps.common.exceptions import ValidationFailed

# Widest stats window one request may ask for: rollups are one row per
# session per day, so a year of a busy deployment is still a bounded scan.
MAX_STATS_DAYS = 366


class JobRunOutputSerializer(serializers.ModelSerializer):
    duration_s = serializers.FloatField(read_only=True, allow_null=True)
    # A "running" run that is not live belongs to a dead process; the job's
    # next start resumes it from its checkpoint.
    live = serializers.SerializerMethodField()

    def get_live(self, obj: JobRun) -> bool:
        return obj.status == JobRun.Status.RUNNING and obj.job_name in self.context.get("live_jobs", set())

    class Meta:
        model = JobRun
        fields = (
            "id",
            "job_name",
            "parameters",
            "status",
            "trigger",
            "progress_done",
            "progress_total",
            "progress_detail",
            "checkpoint",
            "result",
            "resume_count",
            "resumed_from",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "duration_s",
            "error",
            "worker",
            "live",
        )


class JobRunListApi(APIView):
    permission_classes = [IsAdminUser]

    class FilterSerializer(serializers.Serializer):
        job_name = serializers.CharField(required=False, max_length=100)
        status = serializers.ChoiceField(required=False, choices=JobRun.Status.choices)

    @extend_schema(
        parameters=[
            OpenApiParameter("job_name", str),
            OpenApiParameter("status", str, enum=JobRun.Status.values),
            OpenApiParameter("page", int),
        ],
        responses=JobRunOutputSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = selectors.job_run_list(**filters.validated_data)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        live = job_names_locked(names={r.job_name for r in page if r.status == JobRun.Status.RUNNING})
        data = JobRunOutputSerializer(page, many=True, context={"live_jobs": live}).data
        return paginator.get_paginated_response(data)


class JobRunDetailApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses=JobRunOutputSerializer)
    def get(self, request: Request, run_id: str) -> Response:
        run = selectors.job_run_get(run_id=run_id)
        live = job_names_locked(names={run.job_name}) if run.status == JobRun.Status.RUNNING else set()
        return Response(JobRunOutputSerializer(run, context={"live_jobs": live}).data)


class ActivityStatsApi(APIView):
    permission_classes = [IsAdminUser]

    class FilterSerializer(serializers.Serializer):
        start = serializers.DateField(required=False)
        end = serializers.DateField(required=False)
        session_id = serializers.UUIDField(required=False)
        user = serializers.CharField(required=False, max_length=150)

    class OutputSerializer(serializers.Serializer):
        start = serializers.DateField(source="from")
        end = serializers.DateField(source="to")
        totals = serializers.DictField()
        days = serializers.ListField(child=serializers.DictField())
        top_sessions = serializers.ListField(child=serializers.DictField(), required=False)

    @extend_schema(
        parameters=[
            OpenApiParameter("start", str, description="first day, YYYY-MM-DD (default: 6 days before end)"),
            OpenApiParameter("end", str, description="last day, YYYY-MM-DD (default: today, UTC)"),
            OpenApiParameter("session_id", str),
            OpenApiParameter("user", str, description="username"),
        ],
        responses=OutputSerializer,
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        end = data.get("end") or timezone.now().date()
        try:
            start = data.get("start") or end - timedelta(days=6)
        except OverflowError as exc:  # end near date.min
            raise ValidationFailed("end is too early.", details={"end": [str(end)]}) from exc
        if start > end:
            raise ValidationFailed("start must not be after end.", details={"start": [str(start)], "end": [str(end)]})
        if (end - start).days >= MAX_STATS_DAYS:
            raise ValidationFailed(f"At most {MAX_STATS_DAYS} days per request.", details={"max_days": MAX_STATS_DAYS})
        user_id = None
        if data.get("user"):
            user_id = get_user_model().objects.filter(username=data["user"]).values_list("pk", flat=True).first()
            if user_id is None:
                raise ValidationFailed("No such user.", details={"user": [data["user"]]})
        stats = selectors.activity_stats(start=start, end=end, session_id=data.get("session_id"), user_id=user_id)
        return Response(stats)
