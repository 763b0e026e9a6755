"""Admin for inference requests, suggestions, feedback, model versions and embeddings.

Model versions are promoted and rolled back through the services (actions
below), never by editing the ``promoted`` flag: the services keep "one
promoted version per name" and running realtime workers notice the change on
their next request (hot reload).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from apps.ai import services
from apps.ai.models import Embedding, InferenceRequest, ModelVersion, Suggestion, SuggestionFeedback
from apps.common.exceptions import ApplicationError


class SuggestionInline(admin.TabularInline):
    model = Suggestion
    extra = 0
    fields = ("kind", "rank", "score", "content", "explanation", "source_seqs", "model_version", "created_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(InferenceRequest)
class InferenceRequestAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "session",
        "kind",
        "status",
        "trigger_seq",
        "coalesced",
        "model_version",
        "queued_at",
        "finished_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("id", "session__id", "query", "correlation_id")
    readonly_fields = (
        "session",
        "requested_by",
        "trigger_seq",
        "kind",
        "query",
        "status",
        "model_version",
        "correlation_id",
        "claim_token",
        "coalesced",
        "attempts",
        "queued_at",
        "started_at",
        "finished_at",
        "error",
        "created_at",
        "updated_at",
    )
    inlines = [SuggestionInline]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Suggestion)
class SuggestionAdmin(admin.ModelAdmin):
    list_display = ("id", "session", "kind", "rank", "score", "trigger_seq", "model_version", "created_at")
    list_filter = ("kind", "model_version")
    search_fields = ("id", "session__id")
    readonly_fields = (
        "request",
        "session",
        "kind",
        "rank",
        "content",
        "score",
        "explanation",
        "source_seqs",
        "trigger_seq",
        "model_version",
        "created_at",
        "updated_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(SuggestionFeedback)
class SuggestionFeedbackAdmin(admin.ModelAdmin):
    list_display = ("suggestion", "user", "verdict", "created_at")
    list_filter = ("verdict",)
    readonly_fields = ("suggestion", "user", "verdict", "comment", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "promoted", "decision", "promoted_at", "artifact_bytes", "created_at")
    list_filter = ("name", "promoted")
    readonly_fields = (
        "name",
        "version",
        "decision",
        "evaluation",
        "metrics",
        "artifact_path",
        "artifact_bytes",
        "promoted",
        "promoted_at",
        "created_at",
        "updated_at",
    )
    fields = readonly_fields + ("notes",)
    actions = ["promote_selected", "rollback_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        return super().get_queryset(request).defer("artifact")

    @admin.display(description="decision")
    def decision(self, obj: ModelVersion) -> str:
        """Promoted, or why not: what the training round decided (``metrics["decision"]``)."""
        metrics = obj.metrics if isinstance(obj.metrics, dict) else {}
        return str(metrics.get("decision") or obj.notes or "-")

    @admin.display(description="evaluation on held-out sessions")
    def evaluation(self, obj: ModelVersion) -> str:
        metrics = obj.metrics if isinstance(obj.metrics, dict) else {}
        k = metrics.get("k", 3)
        rows: list[tuple[str, str]] = []
        for who in ("candidate", "baseline", "current"):
            top1, topk = metrics.get(f"{who}_top1"), metrics.get(f"{who}_topk")
            if topk is not None:
                label = metrics.get("current_version", who) if who == "current" else who
                rows.append((str(label), f"top-1 {float(top1 or 0):.4f}, top-{k} {float(topk):.4f}"))
        calibration = metrics.get("calibration") or {}
        for who, figures in calibration.items():
            if isinstance(figures, dict) and figures.get("pairs"):
                rows.append(
                    (
                        f"{who} calibration",
                        f"ECE {figures['ece']}, top-1 Brier {figures['brier_top1']}, NLL {figures['nll']}"
                        f" ({figures['pairs']} pairs)",
                    )
                )
        for reason in metrics.get("reasons") or []:
            rows.append(("not promoted because", str(reason)))
        if not rows:
            return "-"
        return format_html("<table>{}</table>", format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions come from the training job

    @admin.action(description="Promote the selected version (workers pick it up on their next request)")
    def promote_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to promote.", level=messages.ERROR)
            return
        try:
            version = services.model_version_promote(model_version_id=queryset.get().pk)
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
            return
        self.message_user(request, f"{version.label} is now promoted.", level=messages.SUCCESS)

    @admin.action(description="Roll back: demote the promoted version of each selected name, restore the previous")
    def rollback_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for name in sorted(set(queryset.values_list("name", flat=True))):
            restored = services.model_version_rollback(name=name)
            if restored is None:
                self.message_user(
                    request, f"{name}: no version promoted now; the frequency baseline answers.", level=messages.WARNING
                )
            else:
                self.message_user(request, f"{name}: rolled back to {restored.label}.", level=messages.SUCCESS)


@admin.register(Embedding)
class EmbeddingAdmin(admin.ModelAdmin):
    list_display = ("content_hash", "model_name", "dim", "created_at")
    list_filter = ("model_name",)
    search_fields = ("content_hash",)
    readonly_fields = ("content_hash", "model_name", "dim", "created_at")
    exclude = ("vector",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
