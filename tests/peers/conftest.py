from tests.support.aggregator import aggregator, aggregator_factory  # noqa: F401
