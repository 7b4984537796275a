"""A namespace's pipeline: batches of records in, entries applied with their change events, acks in order.

No driver, no Faust: the worker feeds it records and acknowledges what it finished.
"""
