"""The `walstream` command line and the tools it runs: produce, CDC tail, DLQ, the demo job."""
