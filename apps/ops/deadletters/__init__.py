"""Dead letters: archived from every ``*.dlq``, listed, replayed (audited), discarded, purged; and the canary.

``archiver`` drains the DLQs into ``DeadLetter`` rows; ``services`` holds the
lifecycle (failure notes, archive, replay, discard, purge) and the canary
(whose ``fail`` and ``crash`` modes exercise exactly this path); ``selectors``
reads them; ``api``/``urls`` and ``admin`` are the operator's doors.
"""
