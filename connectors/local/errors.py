"""The errors the embedded stack raises: each names the problem and what to do about it."""

from __future__ import annotations


class StackError(Exception):
    """Base of every embedded-stack failure; the message is meant for a person."""


class JavaNotFound(StackError):
    """No Java of the required feature version could be found."""


class MavenUnavailable(StackError):
    """Maven is missing, or it could not resolve an artifact (often: Maven Central unreachable)."""


class PortInUse(StackError):
    """A port the stack needs is already taken by another process."""


class ServiceFailed(StackError):
    """A service exited or never became ready; the message carries the tail of its log."""


class DiskFull(StackError):
    """Too little free space to unpack artifacts or to run the services."""


class UnsupportedMode(StackError):
    """The configured stack mode cannot run here (for example testcontainers without Docker)."""
