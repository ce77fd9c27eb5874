"""The volunteer's configuration: one TOML file in the platform's config directory.

Read with :mod:`tomllib`, written with ``tomli_w`` (atomically, through probe.dataset). Every
setting has a dotted key (``probe.cc``, ``budget.max_runtime_s``), a type, a default and a
``VANTAGE_*`` environment variable. Precedence, highest first: command-line flags (the CLI
applies them), the environment, the file, the defaults (:func:`effective`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from probe.errors import VantageError

CONFIG_ENV = "VANTAGE_CONFIG"  # a config file elsewhere (tests, several probes on one machine)
CONSENT_VERSION = 1  # raised when what the consent text promises changes: volunteers are asked again


class ConfigError(VantageError):
    """A config file that cannot be read or a value of the wrong type (one line)."""


@dataclass(frozen=True)
class Setting:
    key: str
    kind: type  # str, int, float, bool or list (of str)
    default: Any
    env: str | None
    help: str


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("probe.cc", str, None, "VANTAGE_CC", "country code (two letters); unset: from the control helper or the geo database"),
    Setting("probe.asn", str, None, "VANTAGE_ASN", "network, e.g. AS64496; unset: from the control helper or the geo database"),
    Setting("probe.network", str, None, "VANTAGE_NETWORK", "a name for the network (e.g. the ISP)"),
    Setting("probe.lists", list, [], "VANTAGE_LISTS", "lists to measure; empty: the global list plus the country's"),
    Setting("probe.categories", list, [], "VANTAGE_CATEGORIES", "only these Citizen Lab categories; empty: all"),
    Setting("probe.resolvers", list, [], "VANTAGE_RESOLVERS", "resolvers to ask; empty: the system's"),
    Setting("probe.control", str, None, "VANTAGE_CONTROL", "control helper URL"),
    Setting("probe.output", str, None, "VANTAGE_OUTPUT", "results directory; unset: the user data directory's results/"),
    Setting("upload.collector", str, None, "VANTAGE_COLLECTOR", "collector URL results are uploaded to"),
    Setting("upload.proxy", str, None, "VANTAGE_PROXY", "proxy for uploads"),
    Setting("upload.policy", str, "manual", "VANTAGE_UPLOAD", "manual | auto"),
    Setting("budget.max_runtime_s", float, None, "VANTAGE_MAX_RUNTIME_S", "seconds per run; the rest resumes next run"),
    Setting("budget.bytes_per_day", int, None, "VANTAGE_BYTES_PER_DAY", "bytes sent and received per UTC day"),
    Setting("budget.disk_quota_mb", float, None, "VANTAGE_DISK_QUOTA_MB", "results on disk; oldest uploaded files go first"),
    Setting("consent.given", bool, False, None, "informed consent recorded (`vantage consent`)"),
    Setting("consent.version", int, 0, None, "version of the consent text agreed to"),
    Setting("consent.at", str, None, None, "when consent was given (UTC)"),
)}


def config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("vantage", appauthor=False)) / "config.toml"


def load_file(path: Path | None = None) -> dict[str, Any]:
    """The file's settings as a flat {dotted key: value} (missing file: empty)."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} should be a [section]")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in SETTINGS:
                raise ConfigError(f"{path}: unknown setting {key} (see `vantage config show`)")
            flat[key] = _check(key, value, str(path))
    return flat


def _check(key: str, value: Any, where: str) -> Any:
    kind = SETTINGS[key].kind
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ConfigError(f"{where}: {key} should be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
            list: "a list of strings"}[kind]


def parse_value(key: str, text: str) -> Any:
    """A value typed on a command line or in an environment variable (lists: comma-separated)."""
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting {key} (one of: {', '.join(sorted(SETTINGS))})")
    kind = SETTINGS[key].kind
    try:
        if kind is list:
            return [p.strip() for p in text.split(",") if p.strip()]
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return _size(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key} should be {_kind_name(kind)}, got {text!r}") from None


def _size(text: str) -> int:
    """A whole number, with an optional K/M/G suffix (powers of 1024: what `du -h` shows)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(text)
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[(m.group(2) or "")[:1].upper()]
    return int(m.group(1)) * mult


def from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, Any] = {}
    for key, s in SETTINGS.items():
        if s.env and environ.get(s.env, "") != "":
            try:
                out[key] = parse_value(key, environ[s.env])
            except ConfigError as exc:
                raise ConfigError(f"${s.env}: {exc}") from None
    return out


def effective(path: Path | None = None, environ: dict[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """Every setting's value and where it came from ('env', 'file' or 'default'); command-line
    flags sit above these and are applied by the command."""
    file = load_file(path)
    env = from_env(environ)
    out: dict[str, tuple[Any, str]] = {}
    for key, s in SETTINGS.items():
        if key in env:
            out[key] = (env[key], "env")
        elif key in file:
            out[key] = (file[key], "file")
        else:
            out[key] = (s.default, "default")
    return out


def value(key: str, path: Path | None = None) -> Any:
    return effective(path)[key][0]


def save(updates: dict[str, Any], path: Path | None = None, unset: tuple[str, ...] = ()) -> Path:
    """Set (and unset) keys in the file, keeping the others; written atomically."""
    import tomli_w

    from probe.dataset import atomic_write_text

    path = path or config_path()
    flat = load_file(path)
    for key, v in updates.items():
        flat[key] = _check(key, v, "value")
    for key in unset:
        flat.pop(key, None)
    nested: dict[str, dict[str, Any]] = {}
    for key, v in sorted(flat.items()):
        if v is None:
            continue
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "# Vantage configuration (`vantage config show` explains every key)\n"
                             + tomli_w.dumps(nested))


# --------------------------------------------------------------------------- consent


def consent_recorded(path: Path | None = None) -> bool:
    """True when the volunteer agreed to the current consent text (a newer text asks again)."""
    file = load_file(path)
    return bool(file.get("consent.given")) and int(file.get("consent.version", 0)) >= CONSENT_VERSION


def record_consent(given: bool, path: Path | None = None) -> Path:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return save({"consent.given": given, "consent.version": CONSENT_VERSION if given else 0, "consent.at": now}, path)
