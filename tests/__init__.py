"""The test suite; its folders mirror the packages (tests/store/ tests store/, ...).

Shared pytest fixtures are in conftest.py; helpers that build inputs are in tests/helpers/,
imported as ``from tests.helpers.X import ...``."""
