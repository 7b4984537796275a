"""Adapters from walstream's small protocols to the external systems it talks to."""
