"""Kafka: the durable producer and topic administration."""
