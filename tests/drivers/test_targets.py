"""The one scheme table (``millpond.drivers.targets``): every scheme, both pools. Resolving
opens nothing, so this runs without servers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from millpond.drivers import targets
from millpond.drivers.async_url import resolve_async
from millpond.drivers.url import resolve
from millpond.errors import ConfigError

URL_TAIL = "://app:pw@127.0.0.1:1/db"


def _url(scheme: str) -> str:
    return f"{scheme}:///x.db" if scheme.startswith("sqlite") else scheme + URL_TAIL


def _adapter_class(key: str) -> type:
    driver = targets.DRIVERS[key]
    module = importlib.import_module(f"millpond.drivers.{driver.module}")
    cls: type = getattr(module, driver.adapter)
    return cls


@pytest.mark.parametrize("scheme", sorted(targets.SCHEMES))
def test_every_scheme_in_pool(scheme: str) -> None:
    entry = targets.SCHEMES[scheme]
    if entry.sync:
        adapter = resolve(_url(scheme))
        assert type(adapter) is _adapter_class(entry.sync[0])
        assert "pw" not in adapter.description
        return
    with pytest.raises(ConfigError) as info:
        resolve(_url(scheme))
    message = str(info.value)
    assert "pw" not in message
    if entry.not_yet:
        assert "not supported yet" in message
    else:
        assert f"{scheme}:// is an asyncio driver's URL: it needs millpond.AsyncPool" in message
    # and the scheme the user can write instead works in this pool
    advice = message.rpartition("use ")[2].split()[0].rstrip(")")
    if entry.not_yet:
        advice = message.partition("(or ")[2].split()[0]
    assert targets.SCHEMES[advice.partition("://")[0]].sync


@pytest.mark.parametrize("scheme", sorted(targets.SCHEMES))
def test_every_scheme_in_async_pool(scheme: str) -> None:
    entry = targets.SCHEMES[scheme]
    if entry.asyncio:
        adapter = resolve_async(_url(scheme))
        assert type(adapter) is _adapter_class(entry.asyncio[0])
        assert "pw" not in adapter.description
        return
    with pytest.raises(ConfigError) as info:
        resolve_async(_url(scheme))
    message = str(info.value)
    assert "pw" not in message
    if entry.not_yet:
        assert "not supported yet" in message
        advice = message.partition("use ")[2].split()[0]
    else:
        assert f"{scheme}:// is a synchronous driver's URL: it needs millpond.Pool" in message
        advice = message.rpartition("use ")[2].split()[0].rstrip(")")
    assert targets.SCHEMES[advice.partition("://")[0]].asyncio


@pytest.mark.parametrize("scheme", ["postgres+psycopg_async", "postgresql+psycopg_async"])
def test_both_spellings_of_an_async_scheme_say_the_same(scheme: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(f"{scheme}://u@h/db")
    assert str(info.value) == (
        f"{scheme}:// is an asyncio driver's URL: it needs millpond.AsyncPool, not "
        "millpond.Pool (for millpond.Pool use postgresql+psycopg://)"
    )


def test_every_driver_is_reachable_and_every_scheme_names_known_drivers() -> None:
    named = targets.SYNC_DRIVERS | targets.ASYNC_DRIVERS
    assert named == set(targets.DRIVERS)
    for scheme in targets.SCHEMES.values():
        assert scheme.sync or scheme.asyncio or scheme.not_yet, scheme.name


def test_the_resolvers_share_no_private_names() -> None:
    """url.py and async_url.py import only public names, and not from each other."""
    root = Path(targets.__file__).parent
    for name in ("url.py", "async_url.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module not in ("millpond.drivers.url", "millpond.drivers.async_url")
                assert not any(alias.name.startswith("_") for alias in node.names), name


# -- passwords with reserved characters --------------------------------------------------------

PASTED = [
    # the password is 4711/topsecret: "4711" reads as a port, the rest as the database
    ("postgresql://app:4711/topsecret@127.0.0.1/db", ("4711/topsecret", "topsecret")),
    ("postgresql+asyncpg://app:4711/topsecret@127.0.0.1/db", ("4711/topsecret", "topsecret")),
    # "#" starts a fragment: "s3cr" would be a port, "t@host/db" the fragment
    ("mysql://app:s3cr#t@127.0.0.1/db", ("s3cr#t", "s3cr")),
    ("mysql+aiomysql://app:s3cr#t@127.0.0.1/db", ("s3cr#t", "s3cr")),
    ("postgresql+psycopg://app:wh?t@127.0.0.1/db", ("wh?t",)),
    ("mariadb+mysqlconnector://app:a/b?c#d@127.0.0.1/db", ("a/b?c#d", "b?c")),
]


@pytest.mark.parametrize(("url", "secrets"), PASTED)
def test_a_password_with_an_unencoded_reserved_character_is_refused_unquoted(
    url: str, secrets: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    import millpond

    caplog.set_level("DEBUG")
    scheme = url.partition("://")[0]
    pool_class = millpond.AsyncPool if "+a" in scheme else millpond.Pool
    with pytest.raises(ConfigError) as info:
        pool_class(url, open=False)
    exc = info.value
    texts = [str(exc), repr(exc), *(r.getMessage() for r in caplog.records)]
    assert exc.__cause__ is None
    assert exc.__context__ is None
    assert "percent-encode the password" in str(exc)
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_the_percent_encoded_password_is_accepted() -> None:
    adapter = resolve("postgresql+psycopg://app:4711%2Ftopsecret@127.0.0.1/db")
    assert adapter.description == "postgresql+psycopg://app@127.0.0.1/db"
    assert "4711/topsecret" in adapter.secrets


def test_a_password_without_a_host_is_not_quoted_as_a_port() -> None:
    with pytest.raises(ConfigError) as info:
        resolve("mysql://app:hunter2")
    assert "hunter2" not in str(info.value)
    assert "invalid port" in str(info.value)
