"""uvicorn access lines: probe paths dropped (HAProxy checks every server every second)."""


def test_probe_access_lines_are_dropped_and_others_kept():
    import logging

    from apps.common.logging import ProbeAccessFilter

    def access(path: str) -> logging.LogRecord:
        return logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("1.2.3.4:5", "GET", path, "1.1", 200),
            None,
        )

    probe_filter = ProbeAccessFilter()
    assert not probe_filter.filter(access("/readyz"))
    assert not probe_filter.filter(access("/healthz?workers=1"))
    assert probe_filter.filter(access("/api/v1/sessions/"))
    assert probe_filter.filter(access("/ws/sessions/x/?token=[redacted]"))
    # installed on uvicorn's access logger in every process (RealtimeConfig.ready)
    assert any(isinstance(f, ProbeAccessFilter) for f in logging.getLogger("uvicorn.access").filters)
