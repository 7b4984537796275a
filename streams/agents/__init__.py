"""Faust agents: thin steps that decode, dispatch, route and acknowledge."""
