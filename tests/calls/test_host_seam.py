"""The host seam (calls/host.py, docs/integration.md): every setting is resolved when the
app starts, and a wrong one stops the start with a sentence that names it; a project
that sets no CALLS_* setting gets the environment's values or the defaults."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured

from calls import conf, host
from tests.servers import PROJECT_DIR


@pytest.fixture(autouse=True)
def fresh_resolution() -> object:
    yield
    host.resolved.cache_clear()


def test_the_defaults_resolve_to_this_projects_apps() -> None:
    host.check()
    assert host.resolved("CALLS_USER_GROUPS").__module__ == "groups.selectors"
    assert host.resolved("CALLS_DISPLAY_NAME").__module__ == "accounts.selectors"
    assert host.group_model_label() == "chatgroups.Group"
    assert host.moderator_roles() == {"owner", "admin"}


@pytest.mark.parametrize(
    ("setting", "path", "sentence"),
    [
        ("CALLS_USER_GROUPS", "nowhere.groups_of", "CALLS_USER_GROUPS = 'nowhere.groups_of' cannot be imported"),
        ("CALLS_GROUP_ROLES", "groups.selectors.no_such_function", "CALLS_GROUP_ROLES = 'groups.selectors.no_"),
        ("CALLS_GROUP_MEMBERS", "member_ids_of_group", "CALLS_GROUP_MEMBERS = 'member_ids_of_group' cannot be"),
        ("CALLS_GROUP_NAME", "calls.host.LOOKUP_THREADS", "CALLS_GROUP_NAME = 'calls.host.LOOKUP_THREADS' is not"),
        ("CALLS_DISPLAY_NAME", "accounts.models.Nope", "CALLS_DISPLAY_NAME = 'accounts.models.Nope' cannot be"),
        ("CALLS_TOKEN_USER", "x.y", "CALLS_TOKEN_USER = 'x.y' cannot be imported"),
        ("CALLS_WEBSOCKET_AUTH_MIDDLEWARE", "calls.auth.Nope", "CALLS_WEBSOCKET_AUTH_MIDDLEWARE = 'calls.auth.Nope'"),
    ],
)
def test_a_wrong_path_is_refused_with_its_setting_named(
    settings: object, setting: str, path: str, sentence: str
) -> None:
    setattr(settings, setting, path)
    with pytest.raises(ImproperlyConfigured) as refused:
        host.check()
    assert str(refused.value).startswith(sentence)
    assert host.SEAM_BY_SETTING[setting].expects in str(refused.value)  # and what it must be


@pytest.mark.parametrize("label", ["chatgroups.Nope", "nogroups.Group", "Group"])
def test_a_group_model_that_is_not_installed_is_refused(settings: object, label: str) -> None:
    settings.CALLS_GROUP_MODEL = label  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match=rf"^CALLS_GROUP_MODEL = '{label}' is not an installed model"):
        host.check()


@pytest.mark.parametrize("roles", ["owner", [1, 2]])
def test_moderator_roles_must_be_a_list_of_strings(settings: object, roles: object) -> None:
    settings.CALLS_MODERATOR_ROLES = roles  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match=r"^CALLS_MODERATOR_ROLES = "):
        host.check()


def test_a_project_without_calls_settings_gets_the_environment_or_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLS_MAX_PARTICIPANTS", "5")
    monkeypatch.delenv("CALLS_RING_TIMEOUT_SECS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    bare = SimpleNamespace(CALLS_RATE_LIMIT=7)
    conf.install_defaults(bare)
    assert (bare.CALLS_MAX_PARTICIPANTS, bare.CALLS_RING_TIMEOUT_SECS, bare.CALLS_RATE_LIMIT) == (5, 30, 7)
    assert bare.CALLS_PRESENCE_BACKEND == "calls.presence.memory.InMemoryPresence"
    assert set(vars(bare)) == set(conf.CALLS_SETTINGS)


def test_a_bad_environment_value_stops_the_start() -> None:
    """A wrong value stops ``manage.py check`` with a sentence naming the variable, in a
    project that does not set the setting itself (the environment is read for it)."""
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "1", "CALLS_MAX_PARTICIPANTS": "many"}
    checked = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode != 0
    assert "CALLS_MAX_PARTICIPANTS='many' is not an integer." in checked.stderr
