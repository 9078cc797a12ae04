"""Fast shared state behind core ports: failure counters today, rate counters and replay caches later.
One backend per module (``memory`` now; ``redis`` with the scale-out issue)."""
