"""Declarative connector configuration: instance files and the feature flags file, reloaded without restart.

Layout under a root folder (the mesh's working directory by default):

* `config/platform/connectors/*.yaml` (and `*.yml`): connector instances. Each file is a mapping with one
  key, `instances:`, a list of instances (a file may declare any number, of any tenants and platforms). An
  instance has `tenant`, `platform`, `instance_id`, the settable ConnectorInstance fields in snake_case
  (proto JSON forms: durations as `"30s"`, timestamps as RFC 3339 strings; the schema is the proto, unknown
  keys are errors) and `credential:`, whose secrets are only given indirectly (`token_env: COZE_PAT`). An
  instance's `enabled` defaults to true in a file (the proto's default is false). Files ending otherwise,
  such as `example-n8n.yaml.example`, are not loaded.
* `config/feature_flags/platform_connectors.yaml`: `flags:`, a list of FeatureFlag fields. A flag without
  `rollout_percent` is rolled out to 100 %; give 0 for allowlisted tenants only.

Every problem is reported as `<file>: <field path>: <reason>`, all of them at once, in a `ConfigError`;
secrets never appear in a message (only the names of the variables or files they come from).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from google.protobuf import descriptor, json_format, message

from powerx.connector.v1 import callback_pb2, connector_pb2
from servers.common.context import valid_tenant
from servers.common.validate import Violations
from servers.connector import validation

INSTANCES_DIR = Path("config/platform/connectors")
FLAGS_FILE = Path("config/feature_flags/platform_connectors.yaml")
INSTANCE_SUFFIXES = (".yaml", ".yml")

FLAG_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# Upper case only: a lower-case "name" is more likely a pasted secret, which must not be echoed back.
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
MAX_FILE_BYTES = 1024 * 1024
MAX_FLAG_TENANTS = 1000

_ENTRY_KEYS = ("tenant", "platform", "instance_id", "credential")
_FLAG_OUTPUT_ONLY = ("enabled_for_caller", "update_time")


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists (file, field path, reason) of every problem."""

    def __init__(self, problems: Sequence[tuple[str, str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{f}: {p}: {r}" if p else f"{f}: {r}" for f, p, r in self.problems))


@dataclass(frozen=True)
class DeclaredInstance:
    """One connector instance declared in a file.

    Attributes:
        tenant: Tenant that owns it.
        platform: `coze` or `n8n`.
        instance_id: Its id (unique per platform across all files).
        instance: The settings with `credential_input` filled from the environment; never logged (not in
            the repr).
        source: The file it was declared in, relative to the root.
        digest: SHA-256 of its declared content (settings, the names of the variables and files secrets come
            from, and the public-key fingerprint of a private key file), so a change shows without comparing
            secrets. A secret's new value in the same variable does not change it (variables only change at
            a restart).
    """

    tenant: str
    platform: str
    instance_id: str
    instance: connector_pb2.ConnectorInstance = field(repr=False)
    source: str
    digest: str


@dataclass(frozen=True)
class LoadedConfig:
    """A consistent load of every configuration file.

    Attributes:
        instances: Declared instances, in file order.
        flags: Flags of the flags file (empty when it is absent).
        flags_file: Whether the flags file exists.
        files: Every file read (relative to the root when inside it) → SHA-256 of its bytes.
        load_time_ms: When it was loaded (Unix ms).
    """

    instances: tuple[DeclaredInstance, ...] = ()
    flags: tuple[callback_pb2.FeatureFlag, ...] = ()
    flags_file: bool = False
    files: dict[str, str] = field(default_factory=dict)
    load_time_ms: int = 0


# --- YAML -----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings (for proto JSON) and rejects duplicate keys."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {str(key)[:64]!r}", key_node.start_mark
            )
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=True))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(data: bytes, rel: str, problems: list[tuple[str, str, str]]) -> Any:
    try:
        return yaml.load(data, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append((rel, where, exc.problem or exc.context or "is not valid YAML"))
    except yaml.YAMLError as exc:
        problems.append((rel, "", f"is not valid YAML ({exc})"))
    return None


# --- proto fields ---------------------------------------------------------------------------------------

_PARSE_PREFIX = re.compile(r"^Failed to parse \w+ field: ")
_PARSE_SUFFIX = re.compile(r"\s+at [\w.\[\]\"]+\.*$")


def _parse_reason(exc: json_format.ParseError) -> str:
    text = str(exc).split("\n", 1)[0]
    while (m := _PARSE_PREFIX.match(text)) is not None:
        text = text[m.end() :]
    text = _PARSE_SUFFIX.sub("", text).rstrip(".")
    if "expected string or bytes-like object" in text:
        return "must be a string (quote numbers in YAML)"
    return text


def _field_names(desc: Any) -> dict[str, descriptor.FieldDescriptor]:
    names: dict[str, descriptor.FieldDescriptor] = {}
    for f in desc.fields:
        names[f.name] = f
        names[f.json_name] = f
    return names


def _is_plain_message(f: descriptor.FieldDescriptor) -> bool:
    """A message field this loader walks into (not a map, not a well-known type parsed by ParseDict)."""
    return (
        f.message_type is not None
        and not f.message_type.GetOptions().map_entry
        and not f.message_type.full_name.startswith("google.protobuf.")
    )


def _parse_message(
    doc: Mapping[Any, Any],
    msg: message.Message,
    path: str,
    problems: list[tuple[str, str]],
    *,
    skip: Sequence[str] = (),
    forbidden: Mapping[str, str] | None = None,
) -> None:
    """Parses a YAML mapping into `msg` field by field, so every problem names its exact path."""
    names = _field_names(msg.DESCRIPTOR)
    for key, value in doc.items():
        k = str(key)
        at = f"{path}.{k}" if path else k
        if k in skip:
            continue
        if forbidden and k in forbidden:
            problems.append((at, forbidden[k]))
            continue
        f = names.get(k)
        if f is None:
            known = ", ".join(sorted({x.name for x in names.values()} - set(forbidden or ()) - set(skip)))
            problems.append((at, f"is not a field (expected one of: {known})"))
            continue
        if _is_plain_message(f) and value is not None:
            if f.is_repeated:
                if not isinstance(value, list):
                    problems.append((at, "must be a list"))
                    continue
                for i, item in enumerate(value):
                    sub = getattr(msg, f.name).add()
                    if isinstance(item, dict):
                        _parse_message(item, sub, f"{at}[{i}]", problems)
                    else:
                        problems.append((f"{at}[{i}]", "must be a mapping"))
            elif isinstance(value, dict):
                sub = getattr(msg, f.name)
                sub.SetInParent()
                _parse_message(value, sub, at, problems)
            else:
                problems.append((at, "must be a mapping"))
            continue
        tmp = type(msg)()
        try:
            json_format.ParseDict({f.name: value}, tmp)
        except json_format.ParseError as exc:
            problems.append((at, _parse_reason(exc)))
            continue
        if f.message_type is None and not f.is_repeated:
            setattr(msg, f.name, getattr(tmp, f.name))  # MergeFrom would skip an explicit default (false, 0)
        else:
            msg.MergeFrom(tmp)


# --- credentials ----------------------------------------------------------------------------------------


@dataclass
class _CredentialParse:
    """Where each secret of a credential came from, to name it in validation messages."""

    ci: connector_pb2.CredentialInput = field(default_factory=connector_pb2.CredentialInput, repr=False)
    # proto-side suffix (`.api_key.token`) → (YAML-side suffix, description of the source)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    key_files: list[Path] = field(default_factory=list)
    key_fingerprints: list[str] = field(default_factory=list)


_KINDS = ("api_key", "oauth", "coze_jwt")
_CRED_TOP = (*_KINDS, "webhook_secrets_env", "secret_headers_env", "coze_verify_token_env")
_LITERALS = {
    "webhook_secrets": "use webhook_secrets_env, a list of environment variable names",
    "secret_headers": "use secret_headers_env, header name → environment variable name",
    "coze_verify_token": "use coze_verify_token_env, the name of an environment variable",
}
_KIND_FIELDS: dict[str, dict[str, str]] = {
    # kind → plain keys allowed (value: proto field) ; secrets are `<field>_env`
    "api_key": {"expire_time": "expire_time"},
    "oauth": {
        "expire_time": "expire_time",
        "token_url": "token_url",
        "client_id": "client_id",
        "scopes": "scopes",
    },
    "coze_jwt": {"app_id": "app_id", "public_key_id": "public_key_id", "token_ttl": "token_ttl"},
}
_KIND_SECRETS: dict[str, tuple[str, ...]] = {
    "api_key": ("token",),
    "oauth": ("access_token", "refresh_token", "client_secret"),
    "coze_jwt": (),
}


class _Env:
    def __init__(self, environ: Mapping[str, str], problems: list[tuple[str, str]]) -> None:
        self.environ = environ
        self.problems = problems

    def get(self, name: Any, path: str) -> str | None:
        if not isinstance(name, str) or not ENV_NAME.match(name):
            self.problems.append(
                (path, "must be the name of an environment variable (upper-case letters, digits and _)")
            )
            return None
        value = self.environ.get(name, "")
        if not value:
            self.problems.append((path, f"environment variable {name} is not set"))
            return None
        return value


def _parse_credential(
    doc: Any, at: str, file_dir: Path, environ: Mapping[str, str], problems: list[tuple[str, str]]
) -> _CredentialParse:
    out = _CredentialParse()
    if not isinstance(doc, dict):
        problems.append((at, "must be a mapping"))
        return out
    env = _Env(environ, problems)
    kinds = [k for k in _KINDS if k in doc]
    if len(kinds) > 1:
        problems.append((at, f"must give at most one of api_key, oauth, coze_jwt (has {', '.join(kinds)})"))
    for key, value in doc.items():
        k = str(key)
        path = f"{at}.{k}"
        if k in _LITERALS:
            problems.append((path, f"must not hold a secret in the file: {_LITERALS[k]}"))
        elif k not in _CRED_TOP:
            problems.append((path, f"is not a credential key (expected one of: {', '.join(_CRED_TOP)})"))
        elif k in _KINDS:
            if not isinstance(value, dict):
                problems.append((path, "must be a mapping"))
            elif k == kinds[0]:
                _parse_kind(k, doc=value, at=path, file_dir=file_dir, env=env, out=out, problems=problems)
        elif k == "webhook_secrets_env":
            if not isinstance(value, list):
                problems.append((path, "must be a list of environment variable names"))
                continue
            for i, name in enumerate(value):
                secret = env.get(name, f"{path}[{i}]")
                if secret is not None:
                    out.sources[f".webhook_secrets[{len(out.ci.webhook_secrets)}]"] = (
                        f".webhook_secrets_env[{i}]",
                        f"environment variable {name}",
                    )
                    out.ci.webhook_secrets.append(secret)
        elif k == "secret_headers_env":
            if not isinstance(value, dict):
                problems.append((path, "must map header names to environment variable names"))
                continue
            for header, name in value.items():
                secret = env.get(name, f"{path}.{header}")
                if secret is not None:
                    out.sources[f".secret_headers[{header}]"] = (
                        f".secret_headers_env.{header}",
                        f"environment variable {name}",
                    )
                    out.ci.secret_headers[str(header)] = secret
        elif k == "coze_verify_token_env":
            secret = env.get(value, path)
            if secret is not None:
                out.sources[".coze_verify_token"] = (
                    ".coze_verify_token_env",
                    f"environment variable {value}",
                )
                out.ci.coze_verify_token = secret
    return out


def _parse_kind(
    kind: str,
    *,
    doc: Mapping[Any, Any],
    at: str,
    file_dir: Path,
    env: _Env,
    out: _CredentialParse,
    problems: list[tuple[str, str]],
) -> None:
    sub = getattr(out.ci, kind)
    sub.SetInParent()
    plain = _KIND_FIELDS[kind]
    secrets = _KIND_SECRETS[kind]
    env_keys = {f"{s}_env": s for s in secrets}
    if kind == "coze_jwt":
        env_keys["private_key_env"] = "private_key_pem"
    literals = set(secrets) | ({"private_key_pem", "private_key"} if kind == "coze_jwt" else set())
    for key, value in doc.items():
        k = str(key)
        path = f"{at}.{k}"
        if k in literals:
            hint = "private_key_file or private_key_env" if kind == "coze_jwt" else f"{k}_env"
            problems.append((path, f"must not hold a secret in the file: use {hint}"))
        elif k in env_keys:
            secret = env.get(value, path)
            if secret is not None:
                setattr(sub, env_keys[k], secret)
                out.sources[f".{kind}.{env_keys[k]}"] = (f".{kind}.{k}", f"environment variable {value}")
        elif kind == "coze_jwt" and k == "private_key_file":
            _read_key_file(value, path=path, file_dir=file_dir, sub=sub, out=out, problems=problems)
        elif k in plain:
            tmp = type(sub)()
            try:
                json_format.ParseDict({plain[k]: value}, tmp)
            except json_format.ParseError as exc:
                problems.append((path, _parse_reason(exc)))
                continue
            sub.MergeFrom(tmp)
        else:
            allowed = sorted({*plain, *env_keys} | ({"private_key_file"} if kind == "coze_jwt" else set()))
            problems.append((path, f"is not a key of {kind} (expected one of: {', '.join(allowed)})"))
    if kind == "coze_jwt" and "private_key_file" in doc and "private_key_env" in doc:
        problems.append((at, "give one of private_key_file and private_key_env"))
    for s in secrets[:1]:  # the first secret of a kind is required (token, access_token)
        if f"{s}_env" not in doc:
            problems.append((f"{at}.{s}_env", "is required: the name of the environment variable holding it"))
    if kind == "coze_jwt" and "private_key_file" not in doc and "private_key_env" not in doc:
        problems.append((at, "needs private_key_file or private_key_env"))


def _read_key_file(
    value: Any,
    *,
    path: str,
    file_dir: Path,
    sub: connector_pb2.CozeJwtCredential,
    out: _CredentialParse,
    problems: list[tuple[str, str]],
) -> None:
    if not isinstance(value, str) or not value:
        problems.append((path, "must be a file path (relative to this file's folder)"))
        return
    key_path = (file_dir / value).resolve()
    try:
        data = key_path.read_bytes()[: 64 * 1024]
    except OSError as exc:
        problems.append((path, f"cannot read {value}: {exc.strerror or exc}"))
        return
    out.key_files.append(key_path)
    sub.private_key_pem = data.decode("utf-8", errors="replace")
    out.sources[".coze_jwt.private_key_pem"] = (".coze_jwt.private_key_file", f"file {value}")
    try:
        public = load_pem_private_key(data, password=None).public_key()
        der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        out.key_fingerprints.append(hashlib.sha256(der).hexdigest())
    except (ValueError, TypeError):
        out.key_fingerprints.append("unreadable")  # validation reports it


# --- instances ------------------------------------------------------------------------------------------


def _credential_field(field_path: str, at: str, cred: _CredentialParse) -> tuple[str, str]:
    """Maps a violation path under `credential_input` to the YAML path, and the source note to add."""
    prefix = f"{at}.credential_input"
    suffix = field_path[len(prefix) :]
    if suffix in cred.sources:
        yaml_suffix, source = cred.sources[suffix]
        return f"{at}.credential{yaml_suffix}", f" (value of {source})"
    for proto, yaml_name in (
        (".webhook_secrets", ".webhook_secrets_env"),
        (".secret_headers", ".secret_headers_env"),
        (".coze_verify_token", ".coze_verify_token_env"),
    ):
        if suffix.startswith(proto):
            suffix = yaml_name + suffix[len(proto) :]
            break
    return f"{at}.credential{suffix}", ""


def _parse_instance(
    entry: Any,
    at: str,
    *,
    source: Path,
    rel: str,
    environ: Mapping[str, str],
    problems: list[tuple[str, str]],
) -> tuple[DeclaredInstance | None, list[Path]]:
    if not isinstance(entry, dict):
        problems.append((at, "must be a mapping"))
        return None, []
    before = len(problems)
    tenant, platform, instance_id = (entry.get(k) for k in ("tenant", "platform", "instance_id"))
    if not isinstance(tenant, str) or not valid_tenant(tenant):
        problems.append((f"{at}.tenant", "is required: a tenant id of 1-63 letters, digits, '.', '_', '-'"))
    if not isinstance(platform, str) or platform not in validation.PLATFORMS:
        problems.append((f"{at}.platform", "is required: coze or n8n"))
    if not isinstance(instance_id, str) or not validation.INSTANCE_ID.match(instance_id):
        problems.append(
            (f"{at}.instance_id", "is required: 1-63 lower-case letters, digits and '-' (not at the ends)")
        )
    inst = connector_pb2.ConnectorInstance(enabled=True)
    forbidden = dict.fromkeys(validation.OUTPUT_ONLY_FIELDS, "is output only")
    forbidden["tenant_id"] = "is output only: give tenant"
    forbidden["credential_input"] = "is not accepted in a file: give credential: with *_env references"
    _parse_message(entry, inst, at, problems, skip=_ENTRY_KEYS, forbidden=forbidden)
    cred = _CredentialParse()
    if entry.get("credential") is not None:
        cred = _parse_credential(entry["credential"], f"{at}.credential", source.parent, environ, problems)
        inst.credential_input.CopyFrom(cred.ci)
    if len(problems) > before:
        return None, cred.key_files
    assert isinstance(tenant, str) and isinstance(platform, str) and isinstance(instance_id, str)  # noqa: PT018
    v = Violations()
    validation.validate_instance(inst, platform, v, field=at, creating=True)
    for f, reason in v.items:
        if f.startswith(f"{at}.credential_input"):
            yaml_field, note = _credential_field(f, at, cred)
            problems.append((yaml_field, reason + note))
        else:
            problems.append((f, reason))
    if len(problems) > before:
        return None, cred.key_files
    declared = {
        "tenant": tenant,
        "platform": platform,
        "instance_id": instance_id,
        "entry": entry,
        "key_fingerprints": cred.key_fingerprints,
    }
    digest = hashlib.sha256(json.dumps(declared, sort_keys=True, default=str).encode()).hexdigest()
    return (
        DeclaredInstance(
            tenant=tenant,
            platform=platform,
            instance_id=instance_id,
            instance=inst,
            source=rel,
            digest=digest,
        ),
        cred.key_files,
    )


# --- flags ----------------------------------------------------------------------------------------------


def _parse_flag(entry: Any, at: str, problems: list[tuple[str, str]]) -> callback_pb2.FeatureFlag | None:
    if not isinstance(entry, dict):
        problems.append((at, "must be a mapping"))
        return None
    before = len(problems)
    flag = callback_pb2.FeatureFlag(rollout_percent=100)
    _parse_message(entry, flag, at, problems, forbidden=dict.fromkeys(_FLAG_OUTPUT_ONLY, "is output only"))
    if len(problems) > before:
        return None
    v = Violations()
    if not flag.name:
        v.add(f"{at}.name", "is required")
    elif len(flag.name) > 63 or not FLAG_NAME.match(flag.name):
        v.add(f"{at}.name", "must be lower-kebab-case: a-z, 0-9 and single '-' (up to 63)")
    v.text(flag.description, f"{at}.description", max_len=1000)
    v.check(0 <= flag.rollout_percent <= 100, f"{at}.rollout_percent", "must be 0 to 100")
    for list_name in ("tenant_allowlist", "tenant_denylist"):
        tenants = getattr(flag, list_name)
        if v.check(
            len(tenants) <= MAX_FLAG_TENANTS, f"{at}.{list_name}", f"has more than {MAX_FLAG_TENANTS}"
        ):
            for i, t in enumerate(tenants):
                v.check(valid_tenant(t), f"{at}.{list_name}[{i}]", "is not a tenant id")
    for i, p in enumerate(flag.platforms):
        v.check(p in validation.PLATFORMS, f"{at}.platforms[{i}]", "must be coze or n8n")
    if flag.HasField("rate_limit"):
        validation.check_rate_limit(flag.rate_limit, v, f"{at}.rate_limit")
    problems.extend(v.items)
    return None if len(problems) > before else flag


# --- loading --------------------------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def instance_files(root: Path) -> list[Path]:
    """The instance files under `root`, sorted by name (`*.yaml.example` and the like are not loaded)."""
    folder = root / INSTANCES_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in INSTANCE_SUFFIXES and p.is_file())


def _read(path: Path, rel: str, problems: list[tuple[str, str, str]]) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append((rel, "", f"cannot be read: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.append((rel, "", f"is larger than {MAX_FILE_BYTES // 1024} KiB"))
        return None
    return data


def load_config(root: Path, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Loads and checks every configuration file under `root`.

    Args:
        root: Folder holding `config/` (the mesh's working directory by default).
        environ: Environment the `*_env` references are read from; None means `os.environ`.

    Returns:
        The configuration; no instance files and no flags file give an empty one.

    Raises:
        ConfigError: naming every problem as `<file>: <field path>: <reason>`.
    """
    env = os.environ if environ is None else environ
    problems: list[tuple[str, str, str]] = []
    files: dict[str, str] = {}
    instances: list[DeclaredInstance] = []
    seen: dict[tuple[str, str], str] = {}
    for path in instance_files(root):
        rel = _rel(path, root)
        data = _read(path, rel, problems)
        if data is None:
            continue
        files[rel] = hashlib.sha256(data).hexdigest()
        doc = _parse_yaml(data, rel, problems)
        if doc is None:
            continue
        if not isinstance(doc, dict) or set(doc) - {"instances"}:
            problems.append((rel, "", "must be a mapping with one key, instances: (a list of instances)"))
            continue
        entries = doc.get("instances") or []
        if not isinstance(entries, list):
            problems.append((rel, "instances", "must be a list"))
            continue
        for i, entry in enumerate(entries):
            at = f"instances[{i}]"
            found: list[tuple[str, str]] = []
            inst, key_files = _parse_instance(entry, at, source=path, rel=rel, environ=env, problems=found)
            for key_file in key_files:
                with contextlib.suppress(OSError):  # an unreadable key file is reported by the parse
                    files[_rel(key_file, root)] = hashlib.sha256(key_file.read_bytes()).hexdigest()
            problems.extend((rel, f, r) for f, r in found)
            if inst is None:
                continue
            key = (inst.platform, inst.instance_id)
            if key in seen:
                problems.append(
                    (
                        rel,
                        f"{at}.instance_id",
                        f"{inst.platform}/{inst.instance_id} is also declared in {seen[key]}",
                    )
                )
                continue
            seen[key] = f"{rel} {at}"
            instances.append(inst)
    flags, flags_file = _load_flags(root, files, problems)
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(
        instances=tuple(instances),
        flags=tuple(flags),
        flags_file=flags_file,
        files=files,
        load_time_ms=int(time.time() * 1000),
    )


def _load_flags(
    root: Path, files: dict[str, str], problems: list[tuple[str, str, str]]
) -> tuple[list[callback_pb2.FeatureFlag], bool]:
    path = root / FLAGS_FILE
    if not path.is_file():
        return [], False
    rel = _rel(path, root)
    data = _read(path, rel, problems)
    if data is None:
        return [], True
    files[rel] = hashlib.sha256(data).hexdigest()
    doc = _parse_yaml(data, rel, problems)
    if doc is None:
        return [], True
    if not isinstance(doc, dict) or set(doc) - {"flags"}:
        problems.append((rel, "", "must be a mapping with one key, flags: (a list of flags)"))
        return [], True
    entries = doc.get("flags") or []
    if not isinstance(entries, list):
        problems.append((rel, "flags", "must be a list"))
        return [], True
    flags: list[callback_pb2.FeatureFlag] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        found: list[tuple[str, str]] = []
        flag = _parse_flag(entry, f"flags[{i}]", found)
        problems.extend((rel, f, r) for f, r in found)
        if flag is None:
            continue
        if flag.name in names:
            problems.append((rel, f"flags[{i}].name", f"{flag.name} is declared twice"))
            continue
        names.add(flag.name)
        flags.append(flag)
    return flags, True


# --- watching -------------------------------------------------------------------------------------------


def _scan(root: Path, known: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(mtime ns, size) of every file a load reads or read last time; absent files are left out."""
    paths = {_rel(p, root): p for p in instance_files(root)}
    paths[_rel(root / FLAGS_FILE, root)] = root / FLAGS_FILE
    for rel in known:
        paths.setdefault(rel, root / rel)
    out: dict[str, tuple[int, int]] = {}
    for rel, p in paths.items():
        try:
            st = p.stat()
        except OSError:
            continue
        out[rel] = (st.st_mtime_ns, st.st_size)
    return out


def _hashes(root: Path, rels: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in rels:
        try:
            out[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        except OSError:
            continue
    return out


class ConfigWatcher:
    """Reloads the configuration when its files change, keeping the previous one when the new one is bad.

    Every `poll_s` it compares the files' modification times and sizes (and, when those moved, their
    SHA-256) with the applied configuration's; on a change it loads everything again and hands the new
    configuration to `on_change`. A ConfigError is logged and kept in `last_error`, and the previous
    configuration stays applied; the files are not loaded again until they change once more. When
    `on_change` fails, the next poll tries again.
    """

    def __init__(
        self,
        root: Path,
        on_change: Callable[[LoadedConfig], Awaitable[None]],
        *,
        poll_s: float = 2.0,
        log: logging.Logger | None = None,
        current: LoadedConfig | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Creates a watcher.

        Args:
            root: Folder holding `config/`.
            on_change: Applies a new configuration.
            poll_s: Seconds between checks.
            log: Logger for reload results; `powerx.connector.config` by default.
            current: The configuration already applied (from `load_config` at start); None makes `run`
                load and apply one first.
            environ: Environment for `*_env` references; None means `os.environ`.
        """
        self.root = root
        self.on_change = on_change
        self.poll_s = poll_s
        self.log = log or logging.getLogger("powerx.connector.config")
        self.environ = environ
        self.current = current
        self.last_error = ""
        self._stats: dict[str, tuple[int, int]] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Polls until `stop` is set."""
        if self.current is None:
            await self.reload_now()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)
            if stop.is_set():
                break
            try:
                await self.check()
            except Exception:
                self.log.exception("connector configuration check failed")

    async def check(self) -> bool:
        """Checks the files once and reloads when they changed; returns whether a new config was applied."""
        known = list(self.current.files) if self.current else []
        stats = await asyncio.to_thread(_scan, self.root, known)
        if stats == self._stats:
            return False
        if self.current is not None and set(stats) == set(self.current.files):
            hashes = await asyncio.to_thread(_hashes, self.root, list(stats))
            if hashes == self.current.files:
                self._stats = stats  # touched, or changed back to what is applied
                self.last_error = ""
                return False
        return await self._reload(stats)

    async def reload_now(self) -> bool:
        """Loads the files now (tests, SIGHUP); returns whether a new configuration was applied."""
        known = list(self.current.files) if self.current else []
        stats = await asyncio.to_thread(_scan, self.root, known)
        return await self._reload(stats)

    async def _reload(self, stats: dict[str, tuple[int, int]]) -> bool:
        try:
            loaded = await asyncio.to_thread(load_config, self.root, environ=self.environ)
        except ConfigError as exc:
            self._stats = stats  # do not retry until the files change again
            if str(exc) != self.last_error:
                self.log.error(  # noqa: TRY400  (the message is the point; a trace would only add noise)
                    "connector configuration not reloaded, keeping the previous one: %s",
                    exc,
                    extra={"config_error": str(exc)},
                )
            self.last_error = str(exc)
            return False
        if self.current is not None and loaded.files == self.current.files:
            self._stats = stats
            self.last_error = ""
            return False
        try:
            await self.on_change(loaded)
        except Exception as exc:
            self._stats = None  # try again at the next poll
            self.last_error = f"applying the configuration failed: {exc}"
            self.log.exception("connector configuration could not be applied")
            return False
        self.current = loaded
        self._stats = stats
        self.last_error = ""
        self.log.info(
            "connector configuration loaded",
            extra={
                "instances": len(loaded.instances),
                "flags": len(loaded.flags),
                "files": len(loaded.files),
            },
        )
        return True
