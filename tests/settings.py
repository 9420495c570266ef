"""Settings for the test suite: the production settings with test-only defaults."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-with-enough-length-for-hs256")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")

from config.settings import *  # noqa: F403

# Hashing demo passwords at full strength only slows the suite down.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The test database is an in-memory SQLite shared between threads; a connection kept
# open by the history writer's thread would hold table locks against the test's own
# flush. Servers started by the tests (tests/servers.py) keep the production setting.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
