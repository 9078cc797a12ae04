"""Bastion's pure core: requests and decisions as values, canonical paths, the router, the check chain,
events as values and the ports (small protocols) through which checks reach state.

Nothing in this package does I/O: no sockets, servers, database or Redis clients, no files, no
environment. It takes data and returns data, so it can be tested without an event loop and reasoned
about without knowing how Bastion is deployed. ``tests/unit/test_architecture.py`` enforces this.
"""
