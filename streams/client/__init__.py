"""Clients of the log: the producer SDK (straight to Kafka) and the gRPC API client."""
