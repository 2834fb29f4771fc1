"""Shared fixtures: see tests/e2e/conftest.py for the running-server fixtures."""
