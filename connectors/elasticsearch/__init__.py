"""Elasticsearch: the secondary index, written with external versions."""
