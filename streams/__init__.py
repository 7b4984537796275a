"""walstream: a write-ahead log that stands in front of datastores."""

__version__ = "0.1.0"
