"""Job-system tests (real Redis, real workers); a package so its conftest does not shadow tests/conftest.py."""
