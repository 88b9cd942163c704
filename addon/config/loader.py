"""Load `orchestrator.yaml` and `rules/*.yaml` into one validated, immutable `Config`.

Every problem is reported as ``file:line:col key.path: message — hint``: YAML syntax errors
carry the parser's mark; schema errors are mapped back to the node they came from.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from addon.config import rules, schema_balance
from addon.config import schema as schema
from addon.config.loaded import Config
from addon.config.schema import address_kind
from addon.errors import ConfigError, ConfigIssue

Marks = dict[tuple[str | int, ...], tuple[int, int]]
VALUE = "\0value"  # marks key for the position of a scalar value (vs. its key)
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|function-\w+\[.*\]|\w+\[.*\])$")


# --------------------------------------------------------------------------- YAML with marks


def _marks(node: yaml.Node, path: tuple[str | int, ...], out: Marks) -> None:
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
            out[(*path, key)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            if isinstance(v, yaml.ScalarNode):
                out[(*path, key, VALUE)] = (v.start_mark.line + 1, v.start_mark.column + 1)
            else:
                _marks(v, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode):
                out[(*path, i)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            else:
                _marks(item, (*path, i), out)


def read_yaml(path: Path) -> tuple[Any, Marks]:
    """Parse one YAML file; raise ConfigError with the parser's location on bad syntax."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [ConfigIssue(name, 1, 1, "", "file not found", "create it or fix the path")]
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigIssue(name, 1, 1, "", f"cannot read: {e}", "")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = f"YAML syntax error: {e.problem or e.context}"
        raise ConfigError(
            [ConfigIssue(name, line, col, "", msg, "check indentation, quotes and colons")]
        ) from None
    except yaml.YAMLError as e:  # ReaderError: bad characters; has a position, no mark
        pos = getattr(e, "position", 0) or 0
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        reason = getattr(e, "reason", None) or str(e).splitlines()[0]
        raise ConfigError(
            [
                ConfigIssue(
                    name,
                    line,
                    col,
                    "",
                    f"YAML error: {reason}",
                    "remove control characters; save the file as UTF-8",
                )
            ]
        ) from None
    marks: Marks = {}
    if node is not None:
        _marks(node, (), marks)
    return data, marks


def _locate(marks: Marks, loc: Iterable[str | int]) -> tuple[int, int]:
    loc = tuple(loc)
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return (1, 1)


def _clean_loc(raw: Iterable[str | int], marks: Marks) -> tuple[str | int, ...]:
    """Drop pydantic's union/validator tags (`str`, `RouteTarget`, ...) from an error location."""
    loc: tuple[str | int, ...] = ()
    for part in raw:
        if isinstance(part, str) and (*loc, part) not in marks and _TYPE_TAG.match(part):
            continue
        loc = (*loc, part)
    return loc


def _fields_of(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The allowed keys at `loc` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    return list(current.model_fields) if _is_model(current) else []


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _step(t: Any, part: str | int) -> Any:
    """The type found one step below `t` at key/index `part` (None if unknown)."""
    if _is_model(t):
        field = t.model_fields.get(str(part))
        return _unwrap(field.annotation) if field else None
    origin = get_origin(t)
    args = get_args(t)
    if origin in (dict, Mapping) and len(args) == 2:
        return _unwrap(args[1])
    if origin in (list, tuple) and args:
        return _unwrap(args[0])
    return None


def _unwrap(t: Any) -> Any:
    """Strip Optional/Annotated/Union down to the first pydantic model or container."""
    for a in get_args(t) if get_origin(t) in (Union, UnionType, Annotated) else (t,):
        if _is_model(a) or get_origin(a) in (dict, list, tuple, Mapping):
            return a
        inner = _unwrap(a) if get_origin(a) in (Union, UnionType, Annotated) else None
        if inner is not None:
            return inner
    return None


def validate(model: type[schema.Strict], data: Any, marks: Marks, file: str) -> Any:
    """Validate `data` against `model`; map pydantic errors to located ConfigIssues."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        issues: list[ConfigIssue] = []
        for err in e.errors():
            loc = _clean_loc(err["loc"], marks)
            path = ".".join(str(p) for p in loc)
            line, col = _locate(marks, loc)
            kind = err["type"]
            hint = ""
            if kind == "extra_forbidden":
                allowed = _fields_of(model, loc[:-1])
                close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
                msg = "unknown key"
                hint = (f"did you mean `{close[0]}`?" if close else "") + (
                    f" allowed here: {', '.join(allowed)}" if allowed else " remove it"
                )
                hint = hint.strip()
            elif kind == "missing":
                msg = "required key is missing"
                hint = f"add `{loc[-1]}:`" if loc else "add it"
            else:
                msg = err["msg"].removeprefix("Value error, ")
                if kind == "value_error" and "; " in msg:
                    msg, hint = msg.split("; ", 1)
                line, col = marks.get((*loc, VALUE), (line, col))
                if (
                    "input" in err
                    and kind not in ("value_error",)
                    and not isinstance(err["input"], dict | list)
                ):
                    hint = f"got {err['input']!r}"
            if issues and issues[-1].path == path and issues[-1].line == line and path:
                prev = issues[-1]
                issues[-1] = ConfigIssue(
                    file, line, col, path, f"{prev.message}, or {msg[:1].lower()}{msg[1:]}", hint
                )
                continue
            issues.append(ConfigIssue(file, line, col, path, msg, hint))
        raise ConfigError(issues) from None


# --------------------------------------------------------------------------- whole config


def _digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        with contextlib.suppress(OSError):
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def load(path: str | Path) -> Config:
    """Load and validate the whole configuration; raise ConfigError listing every problem."""
    cfg_path = Path(path).expanduser().resolve()
    data, marks = read_yaml(cfg_path)
    settings: schema.Settings = validate(schema.Settings, data, marks, str(cfg_path))
    base = cfg_path.parent
    rules_dir = (base / settings.rules).resolve()
    issues: list[ConfigIssue] = []
    parsed: dict[str, Any] = {}
    rule_marks: dict[str, Marks] = {}
    files = [cfg_path]
    if not rules_dir.is_dir():
        line, col = _locate(marks, ("rules",))
        raise ConfigError(
            [
                ConfigIssue(
                    str(cfg_path),
                    line,
                    col,
                    "rules",
                    f"directory {rules_dir} does not exist",
                    "point `rules:` at the rules/ folder that ships with the project",
                )
            ]
        )
    for name, model in rules.RULE_FILES.items():
        f = rules_dir / name
        if not f.exists():
            parsed[name] = model.model_validate({"profiles": {}} if name == "profiles.yaml" else {})
            continue
        files.append(f)
        try:
            rdata, rmarks = read_yaml(f)
            rule_marks[name] = rmarks
            parsed[name] = validate(model, rdata, rmarks, str(f))
        except ConfigError as e:
            issues.extend(e.issues)
    if issues:
        raise ConfigError(issues)

    profiles: dict[str, rules.Profile] = dict(parsed["profiles.yaml"].profiles)
    policies = tuple(parsed["policies.yaml"].policies)
    routes = {
        k: tuple(e if isinstance(e, rules.RouteTarget) else rules.RouteTarget(model=e) for e in v)
        for k, v in parsed["routes.yaml"].routes.items()
    }
    models = tuple(parsed["models.yaml"].models)

    def issue(file: Path, m: Marks, loc: tuple[str | int, ...], msg: str, hint: str) -> None:
        line, col = _locate(m, loc)
        issues.append(ConfigIssue(str(file), line, col, ".".join(map(str, loc)), msg, hint))

    known = ", ".join(sorted(profiles)) or "(none: add rules/profiles.yaml)"
    if settings.default_profile not in profiles:
        issue(
            cfg_path,
            marks,
            ("default_profile",),
            f"profile {settings.default_profile!r} is not defined in rules/profiles.yaml",
            f"use one of: {known}",
        )
    pm = rule_marks.get("policies.yaml", {})
    for i, p in enumerate(policies):
        down = p.budget.downgrade_to if p.budget else None
        if down and down not in profiles:
            issue(
                rules_dir / "policies.yaml",
                pm,
                ("policies", i, "budget", "on_exceed"),
                f"downgrade profile {down!r} is not defined",
                f"use one of: {known}",
            )
        if p.profile and p.profile not in profiles:
            issue(
                rules_dir / "policies.yaml",
                pm,
                ("policies", i, "profile"),
                f"profile {p.profile!r} is not defined",
                f"use one of: {known}",
            )
        for j, prov in enumerate([*p.constraints.providers.allow, *p.constraints.providers.deny]):
            if prov not in settings.providers:
                issue(
                    rules_dir / "policies.yaml",
                    pm,
                    ("policies", i, "constraints", "providers"),
                    f"provider {prov!r} is not configured (entry {j})",
                    f"configured providers: {', '.join(settings.providers) or 'none'}",
                )
    mm = rule_marks.get("models.yaml", {})
    for i, dm in enumerate(models):
        if dm.provider not in settings.providers:
            issue(
                rules_dir / "models.yaml",
                mm,
                ("models", i, "provider"),
                f"provider {dm.provider!r} is not configured in {cfg_path.name}",
                f"add it under `providers:` or use one of: {', '.join(settings.providers)}",
            )
    rm = rule_marks.get("routes.yaml", {})
    for name, chain in routes.items():
        for j, t in enumerate(chain):
            if t.provider and t.provider not in settings.providers:
                issue(
                    rules_dir / "routes.yaml",
                    rm,
                    ("routes", name, j),
                    f"provider {t.provider!r} is not configured",
                    f"use one of: {', '.join(settings.providers)}",
                )
    if not settings.clients and address_kind(settings.listen_host) != "loopback":
        issue(cfg_path, marks, ("listen",), f"{settings.listen} is reachable from other machines "
              "and no `clients:` are configured, so anyone there could spend your provider keys",
              "add `clients:` (README: Security) or listen on 127.0.0.1")  # fmt: skip
    if settings.provider_hosts:
        for name, prov in settings.providers.items():
            host = urlsplit(prov.base_url).hostname or ""
            if not prov.local and not any(fnmatch.fnmatchcase(host, h)
                                          for h in settings.provider_hosts):  # fmt: skip
                issue(cfg_path, marks, ("providers", name, "base_url"),
                      f"host {host!r} is not in provider_hosts",
                      f"add it to provider_hosts or fix the URL; allowed: "
                      f"{', '.join(settings.provider_hosts)}")  # fmt: skip
    for loc, msg, hint in schema_balance.problems(settings.balance, settings.providers):
        issue(cfg_path, marks, loc, msg, hint)
    names = [c.name for c in settings.clients]
    for i, c in enumerate(settings.clients):
        if names.count(c.name) > 1:
            issue(cfg_path, marks, ("clients", i, "name"), f"client name {c.name!r} is used twice",
                  "client names must be unique")  # fmt: skip
        for pol in c.policies:
            if pol not in {p.name for p in policies}:
                issue(cfg_path, marks, ("clients", i, "policies"), f"policy {pol!r} is not defined",
                      f"use one of: {', '.join(p.name for p in policies) or '(none)'}")  # fmt: skip
    if settings.mode.startswith("reverse:") is False and not settings.intercept:
        issue(
            cfg_path,
            marks,
            ("intercept",),
            "no hosts to intercept",
            "list the API hosts your apps call, e.g. [api.openai.com]",
        )
    if issues:
        raise ConfigError(issues)

    return Config(
        path=cfg_path,
        base_dir=base,
        rules_dir=rules_dir,
        settings=settings,
        profiles=profiles,
        policies=policies,
        routes=routes,
        models=models,
        files=tuple(files),
        version=_digest(files),
    )


def watched_files(cfg: Config) -> tuple[Path, ...]:
    """Files whose change should trigger a reload (including rule files not yet created)."""
    return (cfg.path, *(cfg.rules_dir / n for n in rules.RULE_FILES))
