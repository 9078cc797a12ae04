"""Thin translations between the outside world and the runtime: the admin API app, the CLI, and the
wiring that runs them (``serve``). The ASGI middleware face joins them in a later issue."""
