"""Property: no config value and no damaged state file ends the app with a traceback.

The app reads a TOML config the user writes, ``TRAYUPDATER_*`` variables, and JSON state
files it wrote itself (``state.json``, which also holds the update controls of
preferences.py, and ``selfupdate.json``) that a crash, a disk error, another build or a hand
edit may have damaged. The product's rule: bad input gets one clear sentence and loses
nothing. hypothesis plays the attacker:

- config files: every key of ``config_fields.FIELDS`` (read from the table, so a new setting
  is covered the day it is added) with any TOML value (strings empty, huge, with control
  characters, NUL or unpaired surrogates; integers past 2**63 and past what Python reads;
  nan, inf, -0.0, 1e308; booleans, arrays, inline tables, dates and times), values near
  each field's limits, unknown keys, keys in the wrong section, nested and array tables,
  dotted and duplicate keys, raw tokens (arrays nested thousands deep), and byte damage
  (a BOM, NUL, bytes that are not UTF-8, truncation, random bytes); a valid config with
  one or two settings replaced, moved, removed or duplicated; ``TRAYUPDATER_*`` variables
  holding any text;
- state files written by the product (``VersionStore.save_state``, ``SelfUpdateState.save``,
  after update controls were applied), then damaged: a field replaced by any JSON value
  (huge numbers, NaN and Infinity, which Python's json reads), removed or joined by an
  unknown one, the whole document of another type, truncated, bytes that are not UTF-8,
  tokens nested deep enough for a RecursionError.

Invariants:
1. ``load_config`` returns a Config or raises ConfigError, whose message is one line naming
   the offending key (or saying the file is not valid TOML); nothing else escapes.
2. A Config that loads holds, for every field, what its parser promises: finite numbers
   within the bounds FIELDS declares, whole numbers in range, booleans, URLs the HTTPS rule
   allows, paths without NUL... (CONTRACTS, by parser; a new parser must add its contract).
3. Loading a damaged state file never raises. A file that is not a JSON object is kept
   aside byte for byte (state.json) and the state starts fresh; otherwise every field holds
   a value its check allows, each field left intact keeps its value, and a damaged one is
   either dropped (default) or taken as written. What is saved back loads back equal, and
   the update controls work on it.
4. A state the product saves loads back equal.

Two sweeps leave nothing to chance: every setting with every edge value (SWEEP, its own
limits, RAW_TOKENS) in a file and in a variable, every state field with every edge value
(EDGES, JSON_TOKENS). The regressions at the end are what the properties found.
Derandomized by default (about 30 s in all); ``TRAYUPDATER_CONFIG_EXAMPLES=N`` runs N random
examples per property instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import inspect
import ipaddress
import json
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from property_settings import property_settings

from trayupdater import preferences, store
from trayupdater.config import Config, describe, load_config, tomllib  # tomli on 3.10
from trayupdater.config_fields import _ENV_NAME, FIELDS, REPO_RE, SOURCE_KINDS, SPECS, FieldSpec
from trayupdater.errors import ConfigError
from trayupdater.selfupdate_state import SelfUpdateState
from trayupdater.status import Command
from trayupdater.store import MAX_TIMESTAMP, State, VersionStore
from trayupdater.urls import insecure_reason, odd_characters

SECTIONS = sorted({spec.section for spec in FIELDS})
KEYS = [spec.name for spec in FIELDS]
CA_FILE = "ca.pem"  # written beside every config, so that ca_bundle can be valid
DEFAULTS = Config()


def _settings(default_examples: int) -> settings:
    """``default_examples`` derandomized (CI), or ``TRAYUPDATER_CONFIG_EXAMPLES`` random."""
    return property_settings("TRAYUPDATER_CONFIG_EXAMPLES", default_examples)


def event(value: str) -> None:
    """hypothesis' statistics (``--hypothesis-show-statistics``), also callable outside a test."""
    if currently_in_test_context():
        hypothesis.event(value)


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


# --- what each parser promises (invariant 2) ---------------------------------------------------


def _bounds(parse: Callable[[Any], Any]) -> tuple[float, float]:
    """The minimum and maximum a ``_number``/``_integer``/``_opt_integer`` parser was made with."""
    found = inspect.getclosurevars(parse).nonlocals
    if "parse" in found:  # _opt_integer wraps an _integer
        return _bounds(found["parse"])
    return found["minimum"], found["maximum"]


def _no_nul_path(value: object) -> bool:
    return isinstance(value, Path) and "\0" not in str(value)


def _stripped_text(value: object) -> bool:
    return isinstance(value, str) and value != "" and value == value.strip()


def _fetchable(value: object) -> bool:
    return (
        isinstance(value, str)
        and insecure_reason(value) is None
        and "@" not in urlsplit(value).netloc
    )


def _ip(value: object) -> bool:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _proxy(value: object) -> bool:
    if not _stripped_text(value) or odd_characters(value):  # type: ignore[arg-type]
        return False
    parts = urlsplit(value)  # type: ignore[arg-type]
    parts.port  # noqa: B018 - raises for a bad port
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _pattern(value: object) -> bool:
    placeholders = set(re.findall(r"\{(\w*)\}", value)) if isinstance(value, str) else set()
    return _stripped_text(value) and placeholders <= {"os", "arch", "version"}


def _command(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(v, str) for v in value)
        and "{port}" in " ".join(value)
    )


def _environment(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and list(value) == sorted(value)
        and all(
            isinstance(name, str)
            and _ENV_NAME.match(name)
            and isinstance(text, str)
            and "\0" not in text
            for name, text in value
        )
    )


def _in_bounds(spec: FieldSpec, value: object, kind: type) -> bool:
    low, high = _bounds(spec.parse)
    if type(value) is not kind:  # a bool is no number here
        return False
    return math.isfinite(value) and low <= value <= high  # type: ignore[arg-type]


# By parser (its __qualname__): what a loaded value of a field parsed by it satisfies.
CONTRACTS: dict[str, Callable[[FieldSpec, Any], bool]] = {
    "_kind": lambda spec, v: v in SOURCE_KINDS,
    "_channel": lambda spec, v: v in ("stable", "prerelease"),
    "_repo": lambda spec, v: isinstance(v, str) and bool(REPO_RE.match(v)),
    "_opt_repo": lambda spec, v: v is None or (isinstance(v, str) and bool(REPO_RE.match(v))),
    "_api_url": lambda spec, v: _fetchable(v) and not v.endswith("/"),
    "_opt_url": lambda spec, v: v is None or (_fetchable(v) and v.endswith("/")),
    "_opt_str": lambda spec, v: v is None or _stripped_text(v),
    "_opt_pattern": lambda spec, v: v is None or _pattern(v),
    "_opt_proxy": lambda spec, v: v is None or _proxy(v),
    "_bool": lambda spec, v: type(v) is bool,
    "_number.<locals>.parse": lambda spec, v: _in_bounds(spec, v, float),
    "_integer.<locals>.parse": lambda spec, v: _in_bounds(spec, v, int),
    "_opt_integer.<locals>.opt": lambda spec, v: v is None or _in_bounds(spec, v, int),
    "_command": lambda spec, v: _command(v),
    "_env": lambda spec, v: _environment(v),
    "_health_path": lambda spec, v: isinstance(v, str) and v.startswith("/"),
    "_bind": lambda spec, v: isinstance(v, str) and _ip(v),
    "_path": lambda spec, v: _no_nul_path(v),
    "_opt_path": lambda spec, v: v is None or _no_nul_path(v),
}


def check_config(config: Config) -> None:
    """Invariant 2, and what `trayupdater config` shows of it."""
    for spec in FIELDS:
        value = getattr(config, spec.name)
        if value == getattr(DEFAULTS, spec.name):
            continue  # not set (log_dir None: the OS log folder)
        contract = CONTRACTS[spec.parse.__qualname__]
        assert contract(spec, value), f"{spec.name} = {value!r:.200} breaks its contract"
    json.dumps(describe(config))


def check_error(exc: ConfigError, culprits: set[str], where: Path | None) -> None:
    """Invariant 1: one line, naming one of ``culprits`` (or saying the TOML is invalid)."""
    message = str(exc)
    assert message and len(message.splitlines()) == 1, f"not one line: {message!r:.300}"
    assert "\n" not in message and "\r" not in message, message
    if where is not None:
        message = message.replace(str(where), "")
    if "not valid TOML" in message:
        return
    assert any(
        re.search(rf"(?<!\w){re.escape(shown)}(?!\w)", message)
        for name in culprits
        for shown in ((name, repr(name), name.upper()) if name else ("''",))
    ), f"names none of {sorted(culprits)!r:.200}: {message!r:.300}"


def test_every_setting_has_a_contract() -> None:
    """A new kind of parser in FIELDS must say here what its values satisfy."""
    missing = {
        s.name: s.parse.__qualname__ for s in FIELDS if s.parse.__qualname__ not in CONTRACTS
    }
    assert not missing, f"add to CONTRACTS: {missing}"


# --- TOML values, keys and documents -----------------------------------------------------------


def _toml_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)  # an unpaired surrogate: bytes that are not UTF-8 once encoded
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml(value: Any) -> str:
    """``value`` as a TOML value (tomllib has no writer)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Path):
        return _toml_str(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


HUGE_INTS = [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 10**400, -(10**400), 10**4000]
ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, 1e-9]
INTERESTING = [
    *("", " ", "\t", "\0", "a\0b", "\n", "a\nb", "\r", "\u2028", "\u0085", "\ufeff", "\x7f"),
    *("é", "💥", "\u202e", "x" * 100_000, "..", "../..", "~", "~root/x", "~nosuchuser/x"),
    *("{exe} {port}", "{port}", "{exe}", "{", "{0}", "{port", "'", '"', "{os}-{arch}", "{x}"),
    *("https://updates.example", "https://updates.example/", "http://127.0.0.1:1"),
    *("http://localhost", "https://user:pw@h.example", "http://[::1", "https://[", "file:///x"),
    *("https://h.example:99999", "http://proxy.example:3128", "socks5://p:1", "https://a b"),
    *("1e999", "-1e999", "nan", "inf", "-0", "0x10", "1_000", "\u0663", " 5 ", "5.5", "1e3"),
    *("9" * 400, "9" * 5000, "true", "yes", "off", "TRUE", "2", "localhost", "::1", "0.0.0.0"),
    *("fe80::1%eth0", "256.0.0.1", "tuf", "TUF", " github ", "stable", "prerelease", "nightly"),
    *("acme/server", "a/b/c", "/", "/version", "version", "{}", '{"A": "b"}', "[]", "[1]"),
    *('{"A": 1}', '{"1A": "x"}', '{"A": "\\u0000"}', "[" * 3000, '{"A":' * 3000, "C:\\x"),
]
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(),
    st.sampled_from(ODD_FLOATS),
    st.text(max_size=30),
    st.sampled_from(INTERESTING),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.timezone(dt.timedelta(hours=-5)))),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
# Value texts no Python value writes: numbers past what Python reads, deep nesting, forms.
RAW_TOKENS = [
    *("9" * 4301, "-" + "9" * 5000, "1e99999", "+nan", "-nan", "+inf", "0x7FFFFFFFFFFFFFFFFF"),
    *("1979-05-27T07:32:00Z", "1979-05-27 07:32:00", "07:32:00.999999", "1979-05-27"),
    *("'''a\nb'''", '"""\n{exe}\n"""', "'C:\\x'", "1__0", "01", "1e", "[1,]", "{a = 1,}"),
    *("[" * 50 + "]" * 50, "[" * 5000 + "]" * 5000, "{a=" * 5000 + "1" + "}" * 5000),
    *('"\\ud800"', '"\\U0010FFFF"', '"\\x00"', "\u00a0", "true # comment", "[[1], [[2]]]"),
]


def _near(spec: FieldSpec) -> list[Any]:
    """Values near what ``spec`` accepts: the valid one, its limits and just past them."""
    valid = VALID[spec.name]
    values: list[Any] = [valid, valid, "", " ", "a\0b", "\n", "x" * 300, "\u0085", True, False]
    if isinstance(valid, str):
        values += [valid + "\0", " " + valid + "\n", valid.upper(), valid + "\u2028"]
    with contextlib.suppress(KeyError):  # a parser made with a minimum and a maximum
        low, high = _bounds(spec.parse)
        values += [low, high, low - 1, high + 1, (low + high) / 2, float(low), float(high)]
        values += [math.nextafter(low, -math.inf), math.nextafter(high, math.inf)]
        values += [str(low), str(high), f" {high} ", str(high + 1), 0, -1]
    return values


def _plausible(spec: FieldSpec) -> st.SearchStrategy[Any]:
    return st.sampled_from(_near(spec))


def value_texts(spec: FieldSpec) -> st.SearchStrategy[str]:
    return st.one_of(
        _plausible(spec).map(_toml),
        toml_values.map(_toml),
        st.sampled_from(RAW_TOKENS),
    )


# A valid value of every setting (the default where there is one) for the mutated configs.
CHOSEN = {"env": {"LOG_LEVEL": "info"}, "ca_bundle": CA_FILE, "trusted_root": "root.json"}
CANDIDATES: list[Any] = [4096, "acme/server", "https://updates.example/", "logs"]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def _valid_value(spec: FieldSpec) -> Any:
    if spec.name in CHOSEN:
        return CHOSEN[spec.name]
    for candidate in (_plain(getattr(Config(), spec.name)), *CANDIDATES):
        if candidate is not None:
            with contextlib.suppress(ValueError):
                spec.parse(candidate)
                return candidate
    raise AssertionError(f"no valid value for {spec.name}: add one to CHOSEN")


VALID = {spec.name: _valid_value(spec) for spec in FIELDS}

ODD_SECTIONS = [(), ("source", "child"), ("extra",), ("x\ny",), ("Source",), ("",), ("app", "x")]
ODD_KEYS = ["nope", "KIND", "kind ", "", "a\nb", "\u2028", "source", "x\0", "port.x", "ä"]
RAW_KEYS = ["source.kind", "kind.x", "'lit'", '"a\\nb"', '""', "proxy.port", "a . b"]


@st.composite
def entries(draw: st.DrawFn) -> tuple[tuple[str, ...], str, str]:
    """(section path, key as written, value as written): mostly a known key in its section."""
    spec = draw(st.sampled_from(FIELDS))
    key = draw(
        st.one_of(
            st.just(spec.name),
            st.just(spec.name),
            st.just(spec.name),
            st.sampled_from(ODD_KEYS).map(_toml_key),
            st.text(max_size=6).map(_toml_key),
            st.sampled_from(RAW_KEYS),
        )
    )
    section = draw(
        st.one_of(
            st.just((spec.section,)),
            st.just((spec.section,)),
            st.just((spec.section,)),
            st.sampled_from(SECTIONS).map(lambda s: (s,)),
            st.sampled_from(ODD_SECTIONS),
        )
    )
    return section, key, draw(value_texts(spec))


def _header(section: tuple[str, ...], array: bool) -> str:
    name = ".".join(_toml_key(part) for part in section)
    return f"[[{name}]]" if array else f"[{name}]"


def _emit(items: list[tuple[tuple[str, ...], str, str]], grouped: bool, array: bool) -> str:
    lines = [f"{key} = {value}" for section, key, value in items if not section]
    if grouped:
        groups: dict[tuple[str, ...], list[str]] = {}
        for section, key, value in items:
            if section:
                groups.setdefault(section, []).append(f"{key} = {value}")
        for section, body in groups.items():
            lines += [_header(section, array), *body]
    else:  # a header per entry: a section twice is invalid TOML
        for section, key, value in items:
            if section:
                lines += [_header(section, array), f"{key} = {value}"]
    return "\n".join(lines) + "\n"


DAMAGE = [b"\xef\xbb\xbf", b"\0", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\r", b"\\", b'"', b"["]


@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.sampled_from(["none"] * 6 + ["bom", "insert", "truncate", "random", "deep"]))
    event(f"config bytes: {how}")
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from(DAMAGE)) + data[at:]
    if how == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if how == "random":
        return draw(st.binary(max_size=80))
    if how == "deep":
        depth = draw(st.sampled_from([100, 1000, 20000]))
        return data + b"[store]\ndata_dir = " + b"[" * depth + b"]" * depth + b"\n"
    return data


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes not UTF-8


@st.composite
def config_documents(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(entries(), max_size=8))
    grouped = draw(st.sampled_from([True, True, True, False]))
    array = draw(st.sampled_from([False] * 9 + [True]))
    return draw(byte_damage(_encode(_emit(items, grouped, array))))


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """The valid config with one or two settings damaged; the keys that were."""
    placed = {name: (SPECS[name].section, _toml(value)) for name, value in VALID.items()}
    extra: list[tuple[tuple[str, ...], str, str]] = []
    culprits: set[str] = set()
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(KEYS))
        section, value = placed.get(name, (SPECS[name].section, _toml(VALID[name])))
        how = draw(st.sampled_from(["value"] * 4 + ["remove", "section", "duplicate", "unknown"]))
        event(f"config mutation: {how}")
        culprits.add(name)
        if how == "value":
            placed[name] = (section, draw(value_texts(SPECS[name])))
        elif how == "remove":
            placed.pop(name, None)
        elif how == "section":
            other = draw(st.sampled_from([*SECTIONS, "extra", ""]))
            placed[name] = (other, value)
            culprits.add(other)
        elif how == "duplicate":
            extra.append(((section,), name, draw(value_texts(SPECS[name]))))
        else:
            unknown = draw(st.sampled_from([name + "_x", name.upper(), "x"]))
            extra.append(((section,), unknown, value))
            culprits.add(unknown)
    items = [((s,) if s else (), n, v) for n, (s, v) in placed.items()] + extra
    return _encode(_emit(items, grouped=True, array=False)), culprits


def _toml_names(data: Any) -> set[str]:
    """Every key and table name in a parsed TOML document."""
    names: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            names.add(key)
            names |= _toml_names(value)
    elif isinstance(data, list):
        for value in data:
            names |= _toml_names(value)
    return names


def _expected_toml(raw: bytes) -> dict[str, Any] | None:
    """The document as tomllib reads it, None if it does not (the test's oracle)."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # also UnicodeDecodeError, an integer too long
        return None


def load_file(raw: bytes, culprits: set[str] | None = None) -> Config | None:
    """Invariant 1 and 2 for one config file: the Config, or None after a good ConfigError."""
    expected = _expected_toml(raw)
    with _folder() as folder:
        (folder / CA_FILE).write_text("not checked here\n")
        path = folder / "config.toml"
        path.write_bytes(raw)
        try:
            config = load_config(path, env={})
        except ConfigError as exc:
            event("config: refused")
            if expected is None:
                assert "not valid TOML" in str(exc), str(exc)
                culprits = set()
            else:
                assert "not valid TOML" not in str(exc), str(exc)
                culprits = _toml_names(expected) if culprits is None else culprits
            check_error(exc, culprits, path)
            return None
    event("config: loaded")
    assert expected is not None, "loaded a document tomllib cannot read"
    check_config(config)
    for table in expected.values():  # loaded: each key is a known one, in its section
        for key, raw in table.items():
            if isinstance(raw, bool):  # true is no number, no text, no list
                assert SPECS[key].parse.__qualname__ == "_bool", f"{key} = {raw} was taken"
    return config


@_settings(250)
@given(config_documents())
def test_any_config_file_loads_or_names_the_problem(raw: bytes) -> None:
    load_file(raw)


@_settings(300)
@given(mutated_configs())
def test_a_config_with_a_damaged_setting_names_it_and_keeps_the_rest(
    case: tuple[bytes, set[str]],
) -> None:
    raw, culprits = case
    config = load_file(raw, culprits)
    if config is None:
        return
    for name in set(KEYS) - culprits:  # the settings left alone load as written
        expected = SPECS[name].parse(VALID[name])
        actual = getattr(config, name)
        if name in ("ca_bundle", "trusted_root"):  # relative: beside the file naming it
            actual = Path(actual.name)
        assert actual == expected, name


# Every setting meets each of these (and its own limits, and RAW_TOKENS) in the sweep below.
SWEEP: list[Any] = [
    *(True, False, 0, -1, 2**63 - 1, -(2**63), 2**63, 10**400, -(10**400)),
    *(math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5),
    *("", " ", "\0", "a\0b", "\n", "\u2028", "x" * 300, "1e999", "nan", "9" * 400, "~", "{"),
    *([], [1], ["{port}"], ["{exe}", "{port}", 1], {}, {"A": "b"}, {"A": 1}, {"A": {"B": "c"}}),
    *(dt.datetime(2000, 1, 1), dt.date(2000, 1, 1), dt.time(1, 2, 3)),
]


@pytest.mark.parametrize("spec", FIELDS, ids=KEYS)
def test_every_setting_with_every_edge_value(spec: FieldSpec) -> None:
    """Not left to chance: each setting alone in its section with each edge value; and the
    same as a TRAYUPDATER_* variable (text)."""
    for text in [*(_toml(v) for v in [*SWEEP, *_near(spec)]), *RAW_TOKENS]:
        load_file(_encode(f"[{spec.section}]\n{spec.name} = {text}\n"), {spec.name})
    with _folder() as folder:
        path = folder / "config.toml"
        path.write_text("")
        for value in [*SWEEP, *_near(spec)]:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            try:
                config = load_config(path, env={f"TRAYUPDATER_{spec.name.upper()}": text})
            except ConfigError as exc:
                check_error(exc, {spec.name}, path)
            else:
                check_config(config)


def test_the_valid_config_is_valid() -> None:
    """The mutated configs start from a config that loads (else they test nothing)."""
    placed = [((SPECS[n].section,), n, _toml(v)) for n, v in VALID.items()]
    config = load_file(_encode(_emit(placed, grouped=True, array=False)))
    assert config is not None and config.env == (("LOG_LEVEL", "info"),)


env_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(INTERESTING),
    st.sampled_from(HUGE_INTS + ODD_FLOATS).map(str),
    toml_values.map(lambda v: json.dumps(v, default=str)),
)


@_settings(250)
@given(st.data())
def test_any_environment_value_loads_or_names_the_variable(data: st.DataObject) -> None:
    spec = data.draw(st.sampled_from(FIELDS))
    text = data.draw(st.one_of(env_texts, _plausible(spec).map(str)))
    with _folder() as folder:
        path = folder / "config.toml"
        path.write_text("")
        try:
            config = load_config(path, env={f"TRAYUPDATER_{spec.name.upper()}": text})
        except ConfigError as exc:
            event("environment: refused")
            check_error(exc, {spec.name}, path)  # or TRAYUPDATER_<NAME>, matched too
            return
    event("environment: loaded")
    check_config(config)


# --- state files -------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([*HUGE_INTS[:-1], 2**31, 2**31 - 1, 65536, -1, 0, int(MAX_TIMESTAMP) + 1]),
    st.floats(),
    st.sampled_from([*ODD_FLOATS, MAX_TIMESTAMP, math.nextafter(MAX_TIMESTAMP, math.inf)]),
    st.text(max_size=20),
    st.sampled_from(["", "..", "../../etc", "/", "1.0.0", "v1.0.0", ".hidden", "a/b", "\0"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Texts Python's json reads (or chokes on) that json.dumps of a Python value never writes.
JSON_TOKENS = [
    *("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400, "9" * 5000, "-0.0"),
    *("1" + "0" * 400 + ".5", "5e-324", "1.7976931348623157e308", '"\\ud800"', '"\\u0000"'),
    *("[" * 10 + "]" * 10, "[" * 900 + "]" * 900, "[" * 5000 + "]" * 5000),
    *('{"a":' * 3000 + "1" + "}" * 3000, "[" * 100_000 + "]" * 100_000, "tru", "01", '"\\x"'),
]
TOKEN = "@@token@@"
# Just inside and just past the checks of every kind of field (any field may get any).
EDGES: list[Any] = [
    *(-1, 0, 1, 2**31 - 1, 2**31, 65535, 65536, -0.0, 1.5, 1e308, True, False, None),
    *(MAX_TIMESTAMP, math.nextafter(MAX_TIMESTAMP, math.inf), int(MAX_TIMESTAMP) + 1),
    *("", " ", "1", "true", ".x", "../x", "a/b", "1.0.0", "v1.0.0", "1.0.0\n", "\0"),
    *([], ["a", 1], [None], [[]], {}, {"a": 1}),
]
version_names = st.from_regex(r"\A[0-9A-Za-z][0-9A-Za-z.+!_-]{0,15}\Z")
any_texts = st.text(max_size=20) | version_names
timestamps = st.none() | st.floats(0, MAX_TIMESTAMP) | st.integers(0, int(MAX_TIMESTAMP))


def _state_field_strategy(check: Callable[[object], object]) -> st.SearchStrategy[Any]:
    """Values ``check`` (a store._FIELD_CHECKS entry) lets through: what the product saves."""
    name = check.__qualname__
    if name == "_integer.<locals>.check":
        low, high = (inspect.getclosurevars(check).nonlocals[k] for k in ("low", "high"))
        return st.none() | st.integers(low, high) | st.sampled_from([low, high])
    return {
        "_version_name": st.none() | version_names,
        "_text": st.none() | any_texts,
        "_texts": st.lists(any_texts, max_size=4),
        "_timestamp": timestamps.map(lambda t: None if t is None else float(t)),
        "_flag": st.booleans(),
    }[name]


def _state_contract(check: Callable[[object], object], value: object) -> bool:
    name = check.__qualname__
    if name == "_integer.<locals>.check":
        low, high = (inspect.getclosurevars(check).nonlocals[k] for k in ("low", "high"))
        return value is None or (type(value) is int and low <= value <= high)
    if name == "_timestamp":
        return value is None or (type(value) is float and 0 <= value <= MAX_TIMESTAMP)
    return {
        "_version_name": lambda v: v is None or store.is_safe_version_name(v),
        "_text": lambda v: v is None or isinstance(v, str),
        "_texts": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "_flag": lambda v: type(v) is bool,
    }[name](value)


def test_every_state_field_is_checked() -> None:
    """A new State field needs a check in store._FIELD_CHECKS (and one known here)."""
    assert set(store._FIELD_CHECKS) == {f.name for f in dataclasses.fields(State)}
    for check in store._FIELD_CHECKS.values():
        _state_field_strategy(check)  # a KeyError: teach this module the new check


@st.composite
def states(draw: st.DrawFn) -> State:
    values = {n: draw(_state_field_strategy(c)) for n, c in store._FIELD_CHECKS.items()}
    return State(**values)


@st.composite
def controlled_states(draw: st.DrawFn) -> State:
    """A state, then update controls applied as a user would (through the control port)."""
    state = draw(states())
    now = draw(st.floats(1e9, 4e9))
    for _ in range(draw(st.integers(0, 4))):
        command = draw(
            st.sampled_from([Command.SKIP, Command.ALLOW, Command.PAUSE, Command.UNPAUSE])
        )
        payload: object = None
        if command in (Command.SKIP, Command.ALLOW):
            payload = draw(st.one_of(version_names, version_names.map("v".__add__), any_texts))
        elif command is Command.PAUSE:  # the control port sends float(its text) or None
            payload = draw(st.none() | st.floats() | st.sampled_from([1.0, 366 * 86400.0]))
        with contextlib.suppress(preferences.PreferenceError):
            preferences.apply(state, command, payload, now=lambda: now)
    return state


SELF_FIELDS = {
    "blocked": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "last_error": lambda v: v is None or isinstance(v, str),
    "last_check": lambda v: v is None or (type(v) is float and 0 <= v <= MAX_TIMESTAMP),
    "last_result": lambda v: isinstance(v, dict),
}
finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
self_states = st.builds(
    SelfUpdateState,
    blocked=st.lists(any_texts, max_size=4),
    last_error=st.none() | any_texts,
    last_check=timestamps.map(lambda t: None if t is None else float(t)),
    last_result=st.dictionaries(st.text(max_size=8), finite_json, max_size=3),
)


def test_selfupdate_fields_are_known() -> None:
    assert set(SELF_FIELDS) == {f.name for f in dataclasses.fields(SelfUpdateState)}


def _same(a: object, b: object) -> bool:
    """Equal as JSON (False is not 0, 1.0 is not 1)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@st.composite
def damaged(draw: st.DrawFn, saved: bytes, names: list[str]) -> bytes:
    """``saved`` (a state file as written) damaged once or twice."""
    doc: Any = json.loads(saved)
    token = None
    for _ in range(draw(st.integers(1, 2))):
        how = draw(st.sampled_from(["replace"] * 3 + ["token"] * 2 + ["remove", "unknown", "top"]))
        event(f"state damage: {how}")
        name = draw(st.sampled_from(names))
        if not isinstance(doc, dict):
            doc = {}
        if how == "replace":
            doc[name] = draw(st.one_of(st.sampled_from(EDGES), json_values))
        elif how == "token":
            doc[name], token = TOKEN, draw(st.sampled_from(JSON_TOKENS))
        elif how == "remove":
            doc.pop(name, None)
        elif how == "unknown":
            doc[draw(st.text(max_size=8))] = draw(json_values)
        else:
            doc = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 2])))
    if token is not None:
        text = text.replace(json.dumps(TOKEN), token)
    raw = text.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["none"] * 5 + ["truncate", "insert", "bom"]))
    event(f"state bytes: {how}")
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "insert":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(DAMAGE)) + raw[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw


def _expected_json(path: Path) -> dict[str, Any] | None:
    """The file as Python's json reads it when the product reads it, None if not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _taken_as_written(value: object, raw: object) -> bool:
    if isinstance(raw, list):
        return value == [str(x) for x in raw]
    return _same(value, raw) or (type(raw) is int and _same(value, float(raw)))


def check_fields(
    loaded: object,
    original: object,
    written: dict[str, Any],
    contracts: dict[str, Callable[[object], bool]],
    *,
    null_is_unset: bool = False,
) -> None:
    """Invariant 3 for a state file that is a JSON object."""
    fresh = type(loaded)()
    saved = json.loads(json.dumps(dataclasses.asdict(original)))  # type: ignore[call-overload]
    for name, contract in contracts.items():
        value = getattr(loaded, name)
        assert contract(value), f"{name} = {value!r:.200} breaks its check"
        raw = written.get(name)
        if name not in written or (null_is_unset and raw is None):
            assert value == getattr(fresh, name), f"{name}: missing, yet {value!r:.100}"
        elif _same(raw, saved[name]):
            assert value == getattr(original, name), f"{name} lost beside a damaged field"
        else:
            assert value == getattr(fresh, name) or _taken_as_written(value, raw), name


STATE_CONTRACTS = {
    name: (lambda value, check=check: _state_contract(check, value))
    for name, check in store._FIELD_CHECKS.items()
}


def check_state_file(folder: Path, original: State, raw: bytes, now: float) -> None:
    """Invariant 3 for a state.json holding ``raw``, damaged from ``original``."""
    versions = VersionStore(folder)
    path = versions.state_path
    path.write_bytes(raw)
    expected = _expected_json(path)
    loaded = versions.load_state()
    copies = list(folder.glob("state.corrupt-*"))
    if expected is None:  # kept aside byte for byte; a fresh start
        event("state: kept aside")
        assert loaded == State()
        assert not path.exists() and len(copies) == 1
        assert copies[0].read_bytes() == raw
        copies[0].unlink()
    else:
        event("state: read")
        assert path.read_bytes() == raw and not copies
        check_fields(loaded, original, expected, STATE_CONTRACTS)
    versions.save_state(loaded)  # what is saved back is clean
    assert versions.load_state() == loaded
    preferences.hold_reason(loaded, "1.0.0", now=lambda: now)  # the update controls work
    with contextlib.suppress(preferences.PreferenceError):
        preferences.apply(loaded, Command.ALLOW, "1.0.0", now=lambda: now)
        preferences.apply(loaded, Command.PAUSE, 60.0, now=lambda: now)


def check_selfupdate_file(path: Path, original: SelfUpdateState, raw: bytes) -> None:
    """Invariant 3 for a selfupdate.json holding ``raw``, damaged from ``original``."""
    path.write_bytes(raw)
    expected = _expected_json(path)
    loaded = SelfUpdateState.load(path)
    if expected is None:  # documented: a warning, and a fresh start
        event("selfupdate: fresh")
        assert loaded == SelfUpdateState()
    else:
        event("selfupdate: read")
        check_fields(loaded, original, expected, SELF_FIELDS, null_is_unset=True)
    loaded.save(path)
    assert SelfUpdateState.load(path) == loaded


@_settings(200)
@given(st.data())
def test_a_damaged_state_json_never_raises_and_keeps_what_it_can(data: st.DataObject) -> None:
    original = data.draw(controlled_states())
    with _folder() as folder:
        versions = VersionStore(folder)
        versions.save_state(original)
        raw = data.draw(damaged(versions.state_path.read_bytes(), [*store._FIELD_CHECKS, "x"]))
        check_state_file(folder, original, raw, data.draw(st.floats(0, 4e9)))


@_settings(150)
@given(st.data())
def test_a_damaged_selfupdate_json_never_raises_and_keeps_what_it_can(
    data: st.DataObject,
) -> None:
    original = data.draw(self_states)
    with _folder() as folder:
        path = folder / "selfupdate.json"
        original.save(path)
        raw = data.draw(damaged(path.read_bytes(), [*SELF_FIELDS, "x"]))
        check_selfupdate_file(path, original, raw)


def _swept(saved: bytes, name: str) -> Iterator[bytes]:
    """``saved`` with the field ``name`` set to each of EDGES and JSON_TOKENS in turn."""
    doc = json.loads(saved)
    doc[name] = TOKEN
    text = json.dumps(doc)
    for value in [*(json.dumps(v) for v in EDGES), *JSON_TOKENS]:
        yield text.replace(json.dumps(TOKEN), value).encode()


# A value of every field that is not its default, for the sweep below.
VALID_BY_CHECK = {"_version_name": "1.0.0", "_text": "x", "_texts": ["0.9.0"], "_flag": True}
VALID_BY_CHECK["_timestamp"] = 1.7e9


def _valid_state_value(check: Callable[[object], object]) -> Any:
    if check.__qualname__ == "_integer.<locals>.check":
        return inspect.getclosurevars(check).nonlocals["high"]
    return VALID_BY_CHECK[check.__qualname__]


def test_every_state_field_with_every_edge_value() -> None:
    """Not left to chance: each field of both state files with each edge value and token,
    the other fields set and intact."""
    full = State(**{n: _valid_state_value(c) for n, c in store._FIELD_CHECKS.items()})
    self_full = SelfUpdateState(["0.9.0"], "boom", 1.7e9, {"outcome": "up_to_date"})
    with _folder() as folder:
        versions = VersionStore(folder)
        versions.save_state(full)
        saved = versions.state_path.read_bytes()
        for name in [*store._FIELD_CHECKS, "x"]:
            for raw in _swept(saved, name):
                check_state_file(folder, full, raw, 1.7e9)
        path = folder / "selfupdate.json"
        self_full.save(path)
        saved = path.read_bytes()
        for name in [*SELF_FIELDS, "x"]:
            for raw in _swept(saved, name):
                check_selfupdate_file(path, self_full, raw)


@_settings(100)
@given(controlled_states())
def test_a_saved_state_loads_back_equal(state: State) -> None:
    with _folder() as folder:
        versions = VersionStore(folder)
        versions.save_state(state)
        assert versions.load_state() == state


@_settings(100)
@given(self_states)
def test_a_saved_selfupdate_state_loads_back_equal(state: SelfUpdateState) -> None:
    with _folder() as folder:
        state.save(folder / "selfupdate.json")
        assert SelfUpdateState.load(folder / "selfupdate.json") == state


# --- regressions: what the properties found ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'[source]\nrepo = "\xff"\n', "not valid TOML"),
        (b"[child]\nenv = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"[proxy]\nport = " + b"9" * 4301 + b"\n", "not valid TOML"),
        (b"[source]\ncheck_interval = 1" + b"0" * 400 + b"\n", "[source] check_interval"),
        (b'["x\\ny"]\nkind = "github"\n', "unknown setting ['x\\ny'] kind"),
        (b'[source]\n"" = 1\n', "unknown setting [source] ''"),
        (b'[store]\ndata_dir = "/tmp/a\\u0000b"\n', "[store] data_dir"),
        (b'[network]\nca_bundle = "' + b"x" * 300 + b'"\n', "[network] ca_bundle"),
    ],
    ids=[
        "not-utf8:UnicodeDecodeError",
        "deep-array:RecursionError",
        "4301-digits:ValueError-from-int",
        "10**400-seconds:OverflowError",
        "key-with-newline:two-line-message",
        "empty-key:not-shown",
        "nul-in-data_dir:crash-at-start",
        "300-char-ca_bundle:OSError-ENAMETOOLONG",
    ],
)
def test_regression_a_config_file_that_escaped_as_a_traceback(
    tmp_path: Path, raw: bytes, fragment: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("TRAYUPDATER_ENV", "[" * 5000, "TRAYUPDATER_ENV"),  # RecursionError in json.loads
        ("TRAYUPDATER_CA_BUNDLE", "a\x85b", "ca_bundle: 'a\\x85b'"),  # NEL: two lines
    ],
)
def test_regression_an_environment_value_that_escaped(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={name: text})
    assert fragment in str(info.value)
    assert len(str(info.value).splitlines()) == 1


DEEP = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError, not a ValueError


def test_regression_a_state_json_nested_too_deep_is_kept_aside(tmp_path: Path) -> None:
    versions = VersionStore(tmp_path)
    raw = b'{"active": "1.0.0", "blocked": ' + DEEP + b"}"
    versions.state_path.write_bytes(raw)
    assert versions.load_state() == State()
    [kept] = tmp_path.glob("state.corrupt-*")
    assert kept.read_bytes() == raw


def test_regression_a_selfupdate_json_nested_too_deep_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "selfupdate.json"
    path.write_bytes(b'{"blocked": ' + DEEP + b"}")
    assert SelfUpdateState.load(path) == SelfUpdateState()
