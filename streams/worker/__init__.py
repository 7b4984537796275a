"""The stream worker process: the Faust app, the fan-out agent, the retry tiers, supervision and health."""
