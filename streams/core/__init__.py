"""The fan-out core: dispatch to sinks, routing of failures, the retry schedule, breaker, throttle, flood guard.

Pure: no driver, no Faust, no connectors; it depends only on the protocols in ``streams.ports``.
"""
