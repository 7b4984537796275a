"""Cassandra: the primary store, written with cell timestamps as versions."""
