"""Events: the batching writer behind the ``EventSink`` port, and Monitor API queries."""
