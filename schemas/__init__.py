"""Avro and protobuf sources, shipped as package data."""
