"""Settings: every field is read from its own ``CRYPTO_ML_*`` variable, its default declared once."""

from __future__ import annotations

import re
from dataclasses import fields, replace

import pytest

from crypto_ml.core import settings as settings_module
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings, env_name, model_store_problem
from crypto_ml.core.urls import safe_url

#: Rows of the module docstring's table: ``VARIABLE``  default cell  meaning.
ROW = re.compile(r"^``(CRYPTO_ML_[A-Z0-9_]+)``\s+(\S.*?)\s{2,}", re.MULTILINE)
INT_FIELDS = [f.name for f in fields(Settings) if f.type == "int"]
BOOL_FIELDS = [f.name for f in fields(Settings) if f.type == "bool"]


def _documented() -> dict[str, str]:
    return dict(ROW.findall(settings_module.__doc__ or ""))


def test_an_empty_environment_gives_the_dataclass_defaults() -> None:
    from_env = Settings.from_env({"HOME": "/home/u"})
    assert from_env.cache_dir is not None and str(from_env.cache_dir) == "/home/u/.cache/crypto-ml"
    assert replace(from_env, cache_dir=None) == Settings()
    blank = {env_name(f.name): "  " for f in fields(Settings)}
    assert Settings.from_env({**blank, "HOME": "/home/u"}) == from_env


def test_the_table_documents_each_field_and_its_default() -> None:
    documented = _documented()
    assert set(documented) == {env_name(f.name) for f in fields(Settings)}
    defaults = Settings()
    for f in fields(Settings):
        cell = documented[env_name(f.name)]
        if not re.fullmatch(r"``[^`]+``", cell) or f.name == "cache_dir":
            continue  # a description such as "(unset: no auth)" or "hard limit + 60"
        value = getattr(defaults, f.name)
        shown = str(int(value)) if isinstance(value, bool) else str(value)
        assert cell.strip("`") == shown, f"{env_name(f.name)}: the table says {cell}"


def test_each_variable_sets_its_field() -> None:
    assert Settings.from_env({"CRYPTO_ML_LOST_CHECK_SECONDS": "4"}).lost_check_seconds == 4
    assert Settings.from_env({"CRYPTO_ML_PRELOAD_KERAS": "Yes"}).preload_keras is True
    assert Settings.from_env({"CRYPTO_ML_DATA_DIR": "/d"}).data_dir.as_posix() == "/d"
    assert Settings.from_env({"CRYPTO_ML_API_KEYS": " a, ,b "}).api_keys == ("a", "b")
    assert Settings.from_env({"CRYPTO_ML_CACHE_DIR": "off"}).cache_dir is None
    assert Settings.from_env({"CRYPTO_ML_API_COALESCE": "0"}).api_coalesce == 0
    assert Settings.from_env({}).api_coalesce is None
    assert Settings.from_env({"CRYPTO_ML_API_ANSWER_SECONDS": "0"}).api_answer_seconds == 0
    with pytest.raises(ConfigError, match=r"^CRYPTO_ML_FLOWER_PORT=70000 must be at most 65535"):
        Settings.from_env({"CRYPTO_ML_FLOWER_PORT": "70000"})  # an OverflowError traceback


def test_the_visibility_timeout_follows_the_hard_limit_unless_set() -> None:
    assert Settings.from_env({"CRYPTO_ML_HARD_TIME_LIMIT": "1000"}).visibility_timeout == 1060
    assert Settings.from_env({"CRYPTO_ML_HARD_TIME_LIMIT": "1000",
                              "CRYPTO_ML_VISIBILITY_TIMEOUT": "5000"}).visibility_timeout == 5000


@pytest.mark.parametrize("name", INT_FIELDS)
def test_a_bad_whole_number_names_its_variable(name: str) -> None:
    variable = env_name(name)
    with pytest.raises(ConfigError, match=f"^{variable}='ten' is not an integer"):
        Settings.from_env({variable: "ten"})
    with pytest.raises(ConfigError, match=f"^{variable}=-1 must be (positive|at least 0)"):
        Settings.from_env({variable: "-1"})


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_a_switch_is_on_or_off_or_named_as_neither(name: str) -> None:
    variable = env_name(name)
    assert getattr(Settings.from_env({variable: "On"}), name) is True
    assert getattr(Settings.from_env({variable: "no"}), name) is False
    with pytest.raises(ConfigError, match=f"^{variable}='maybe' is neither on nor off"):
        Settings.from_env({variable: "maybe"})


@pytest.mark.parametrize(("env", "named"), [
    ({"CRYPTO_ML_LOG_FORMAT": "xml"}, "CRYPTO_ML_LOG_FORMAT='xml'"),
    ({"CRYPTO_ML_SERIALIZER": "pickle"}, "CRYPTO_ML_SERIALIZER='pickle'"),
    ({"CRYPTO_ML_HARD_TIME_LIMIT": "100"}, "CRYPTO_ML_SOFT_TIME_LIMIT=300"),
    ({"CRYPTO_ML_VISIBILITY_TIMEOUT": "15"}, "CRYPTO_ML_DEAD_AFTER_SECONDS=10"),
    ({"CRYPTO_ML_DEAD_AFTER_SECONDS": "3"}, "CRYPTO_ML_HEARTBEAT_SECONDS"),
    ({"CRYPTO_ML_MODEL_STORE": "ftp://x"}, r"CRYPTO_ML_MODEL_STORE=ftp://\.\.\.: use redis"),
    ({"CRYPTO_ML_MODEL_STORE": "s3://"}, "name a bucket"),
    # a traceback in the API, and every deep task failing on the workers, before; no password
    ({"CRYPTO_ML_MODEL_STORE": "redis://:s3cret@h:abc/0"},
     r"CRYPTO_ML_MODEL_STORE is no Redis URL \(Port could not be cast to integer value as 'abc'"),
    ({"CRYPTO_ML_MODEL_STORE": "sentinel://:s3cret@h:1;sentinel://h:zz"},
     r"no Redis URL \(Port could not be cast to integer value as 'zz'\); .* or sentinel://"),
])
def test_settings_that_do_not_fit_together_name_the_variables(env: dict[str, str],
                                                               named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize("spec", ["rediss+tls://:s3cret@h:6379/0", "sentinel://:s3cret@h:zz",
                                  "redis://:s3cret@h:abc/0", "sentinel://:s3cret;x@h:1"])
def test_a_wrong_model_store_url_is_named_without_its_password(spec: str) -> None:
    with pytest.raises(ConfigError, match="CRYPTO_ML_MODEL_STORE") as refused:
        Settings.from_env({"CRYPTO_ML_MODEL_STORE": spec})
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("sentinel://w:pw1@h1:26379/0;sentinel://w:pw2@h2:26380/0",
     "sentinel://w:**@h1:26379/0;sentinel://w:**@h2:26380/0"),
    ("redis://:secret@127.0.0.1:99999/0", "redis://:**@127.0.0.1:99999/0"),  # a bad port
    ("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2", "sentinel://127.0.0.1:1;sentinel://127.0.0.1:2"),
    ("redis://user:p@ss@host:6379/0", "redis://user:**@host:6379/0"),  # a password with @
    ("redis://host/0?password=secret&db=1", "redis://host/0?password=**&db=1"),
    ("redis://:pa/ss@host/0", "redis://:**@host/0"),
])
def test_a_url_is_shown_with_every_password_hidden_whatever_else_is_wrong(
        url: str, shown: str) -> None:
    # kombu's sanitizer hid the first URL's password of a list only, and raised on a bad port
    assert safe_url(url) == shown


@pytest.mark.parametrize(("spec", "problem"), [
    ("redis://:pa;ss@h:6379/0", None),  # a ';' in a Redis password: redis-py reads it
    ("sentinel://h1:26379; sentinel://h2:26379", None),
    ("sentinel://h:1/x", "invalid literal for int()"),  # caught here, not on every task
    ("sentinel://", "part 1 of the sentinel:// list is no sentinel://HOST:PORT"),
    ("sentinel://h1:1;redis://h2:2", "part 2 of the sentinel:// list is no sentinel://HOST"),
])
def test_a_model_store_url_is_read_as_its_clients_read_it(spec: str, problem: str | None) -> None:
    said = model_store_problem(spec)
    assert said is None if problem is None else problem in (said or "")


def test_named_choices_are_read_in_any_case() -> None:
    """CRYPTO_ML_LOG_FORMAT=JSON was read, CRYPTO_ML_SERIALIZER=JSON refused (an outside
    probe); pickle stays refused in any case."""
    settings = Settings.from_env({"CRYPTO_ML_SERIALIZER": "JSON", "CRYPTO_ML_LOG_FORMAT": "Json"})
    assert (settings.serializer, settings.log_format) == ("json", "json")
    with pytest.raises(ConfigError, match="CRYPTO_ML_SERIALIZER='pickle' is not allowed"):
        Settings.from_env({"CRYPTO_ML_SERIALIZER": "PICKLE"})
