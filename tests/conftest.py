"""Shared fixtures. The real-Asterisk harness lives in tests/harness (loaded as a plugin)."""

import importlib.util

pytest_plugins = ["tests.harness.fixtures"] if importlib.util.find_spec("tests.harness.fixtures") else []
