"""One suite per module. Each registers itself with bench.suite.register; the harness imports them all."""
