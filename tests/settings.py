"""Settings for the test suite: the production settings with test-only defaults."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-with-enough-length-for-hs256")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
# The suite's users join hundreds of times a minute and hold many connections; the
# tests of these two limits set them back to their defaults.
os.environ.setdefault("CALLS_JOINS_PER_MINUTE", "1000000")
os.environ.setdefault("CALLS_MAX_CONNECTIONS_PER_USER", "1000")

from config.settings import *  # noqa: F403

# Hashing demo passwords at full strength only slows the suite down.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# CALLS_TEST_DATABASE=postgresql (make test's second run, of the history and admin tests):
# the same tests on a real PostgreSQL, started here because Django reads DATABASES once,
# before any fixture could start it; stopped when pytest exits. pytest-django creates
# and drops its test database in it as on any server. The connections are production's:
# persistent (the history writer's thread keeps one; idle, it holds no lock against a
# test's TRUNCATE), and those left at the end are ended by tests/conftest.py's
# django_db_setup before the test database is dropped.
TEST_DATABASE = os.environ.get("CALLS_TEST_DATABASE") or "sqlite"
if TEST_DATABASE == "postgresql":
    import atexit

    import dj_database_url

    from tests.postgres_server import PostgresServer

    _postgres = PostgresServer().start()
    atexit.register(_postgres.stop)
    DATABASES["default"] = dj_database_url.parse(  # noqa: F405
        _postgres.url("calls"),
        conn_max_age=DATABASES["default"]["CONN_MAX_AGE"],  # noqa: F405
        conn_health_checks=DATABASES["default"]["CONN_HEALTH_CHECKS"],  # noqa: F405
    )
elif TEST_DATABASE == "sqlite":
    # The test database is an in-memory SQLite shared between threads; a connection kept
    # open by the history writer's thread would hold table locks against the test's own
    # flush. Servers started by the tests (tests/servers.py) keep the production setting.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
else:
    raise ValueError(f"CALLS_TEST_DATABASE={TEST_DATABASE!r}: use sqlite or postgresql.")
