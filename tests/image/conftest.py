"""The image tests check the stores with the integration tests' driver sessions."""

from tests.integration.conftest import stores

__all__ = ["stores"]
