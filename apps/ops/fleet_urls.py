"""Fleet monitoring endpoints: /api/v1/ops/queues/, /api/v1/ops/report/."""

urlpatterns: list = []
