"""From a spec file to a validated :class:`~sweeps.spec.SweepSpec`: YAML read strictly (no
key twice, bounded nesting), ``--set`` overrides, presets, ``--smoke-test`` shrinking,
``"paper:*"``/``"fixed:*"`` shorthands, pydantic errors as one ``FIELD: message`` line, and
every configuration of the space built once as a RunConfig (:func:`parse_spec`).

    spec = load_spec("sweeps/presets/quick.yaml", overrides=["search.num_samples=4"])
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from smartmixed_core.errors import ConfigError
from smartmixed_core.names import PAPER_ARCHITECTURES, resolve_pool
from sweeps.redact import redact_text
from sweeps.spec import (
    ALIASES,
    ARCH_KEYS,
    CONDITIONAL,
    MAX_DEPTH,
    MAX_WIDTH,
    SPACE_KEYS,
    TRANSITION_FRACTION,
    Distribution,
    Search,
    SweepSpec,
    applies,
)

MAX_NESTING = 16
"""The deepest a spec's YAML may nest (a real spec needs 4): deeper is refused, not a
RecursionError."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """A YAML document, checked before it is built: at most :data:`MAX_NESTING` levels deep
    (counted on the parser's events, which need no recursion), no key twice in a mapping.
    Raises ``yaml.YAMLError``."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_NESTING:
                raise yaml.parser.ParserError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", event.start_mark)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"search.num_samples=4"`` -> (["search", "num_samples"], 4); values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", f"expected key=value (dotted key), got {text!r}")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError("--set", f"{key.strip()}: the value {raw!r} is not valid YAML: "
                          f"{_yaml_problem(exc)}; quote a string that holds YAML syntax") from None
    return key.strip().split("."), value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``doc`` with every ``key=value`` set (intermediate mappings created)."""
    doc = copy.deepcopy(doc)
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(text.partition("=")[0], f"{k!r} is not a mapping")
            node = child
        node[keys[-1]] = value
    return doc


def smoke(doc: dict[str, Any]) -> dict[str, Any]:
    """Shrink a spec document to 1-2 trials, one seed, 2 epochs, CPU."""
    doc = copy.deepcopy(doc)
    doc["seeds"] = list(doc.get("seeds") or [0])[:1]
    fixed = doc["fixed"] = doc.get("fixed") or {}
    fixed.update(epochs=2, transition_epoch=1, device="cpu")
    fixed.pop("patience", None)
    search = doc["search"] = doc.get("search") or {}
    search["num_samples"] = min(int(search.get("num_samples", 2)), 2)
    space = search.get("space") or {}
    if space.pop("transition_epoch", None) is not None and not space:
        space["transition_epoch"] = {"choice": [1]}
    per = [k for k in search.get("per") or [] if isinstance(space.get(k), dict)]
    if per and search.get("algorithm") != "grid":  # two cells of one trial each
        search["num_samples"] = 1
        for i, key in enumerate(per):
            if isinstance(space[key].get("choice"), list):
                space[key]["choice"] = space[key]["choice"][: 2 if i == 0 else 1]
    if search.get("algorithm") == "grid":  # keep the first two combinations
        for i, key in enumerate(space):
            space[key] = {"choice": list(space[key].get("choice", []))[: 2 if i == 0 else 1]}
    doc.pop("scheduler", None)
    doc["resources"] = {"cpu": 1, "gpu": 0}
    return doc


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The raw YAML document of ``path`` (a file, or a preset name such as ``quick``)."""
    p = Path(path)
    if not p.exists() and (PRESETS / f"{path}.yaml").exists():
        p = PRESETS / f"{path}.yaml"
    if not p.is_file():
        raise ConfigError("spec", f"{path} is not a file or a preset name; presets: "
                          + ", ".join(preset_names()))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("spec", f"cannot read {p} as UTF-8 text: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError("spec", f"{p} is not valid YAML: {_yaml_problem(exc)}") from None
    if doc is None:
        raise ConfigError("spec", f"{p} is empty (or only comments); a spec needs at least a "
                          "name and a search space (see sweeps/presets/quick.yaml)")
    return doc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error (1-based, as editors count)."""
    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if mark is None or not problem:
        return " ".join(str(exc).split())
    out = f"{at(mark)}: {problem}"
    if context and context_mark is not None:
        out += f" ({context} at {at(context_mark)})"
    return " ".join(out.split())


def load_spec(path: str | Path, overrides: list[str] = (), *,  # type: ignore[assignment]
              smoke_test: bool = False) -> SweepSpec:
    """Read, override, optionally shrink, and validate a spec file."""
    doc = read_spec_file(path)
    if not isinstance(doc, dict):
        raise ConfigError("spec", "the YAML must be a mapping of fields (name, seeds, search, ...)")
    doc = expand_choices(apply_overrides(doc, list(overrides)))
    if smoke_test:
        parse_spec(doc)  # errors point at what the user wrote, not at the shrunk copy
        doc = smoke(doc)
    return parse_spec(doc)


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def _path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the dotted path in the YAML: ``search.space.x.choice[1]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).removeprefix(".")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _model_of(a)) is not None), None)


def _keys_at(loc: tuple[Any, ...]) -> list[str] | None:
    """The keys allowed in the mapping at ``loc`` of the spec (None when unknown)."""
    model: type[BaseModel] | None = SweepSpec
    parts = list(loc)
    while parts and model is not None:
        part = parts.pop(0)
        if model is Search and part == "space":
            if not parts:
                return list(SPACE_KEYS)
            parts.pop(0)
            model = Distribution
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return None
    return [f.alias or name for name, f in model.model_fields.items()]


def _from_pydantic(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    msg = re.sub(r" or instance of \w+", "", err["msg"].removeprefix("Value error, "))
    msg = msg.replace("valid dictionary", "mapping")
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
    if "ctx" in err and isinstance(err["ctx"].get("error"), ConfigError):
        msg = err["ctx"]["error"].message
    elif err["type"] == "extra_forbidden":
        keys = _keys_at(loc[:-1])
        msg = "unknown key" + (f"; allowed: {', '.join(keys)}" if keys else "")
    elif err["type"] == "missing":
        msg = ("missing item" if loc and isinstance(loc[-1], int)
               else "required, but missing")
    elif isinstance(err.get("input"), (str, int, float, bool)) and "got" not in msg:
        shown = redact_text(repr(err["input"]))
        msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return ConfigError(_path(loc) or "spec", msg)


def _check_configs(spec: SweepSpec) -> None:
    """Build a RunConfig for ``fixed`` and for every choice / range end of the space."""
    if not spec.search.space:
        raise ConfigError("search.space", "empty; give at least one parameter, e.g. "
                          "method: {choice: [smartmixed, 'fixed:relu']} (a single configuration "
                          "is a one-element choice)")
    for key, kind, ok, allowed in (
            ("depth", int, lambda v: 1 <= v <= MAX_DEPTH, f"integers in [1, {MAX_DEPTH}]"),
            ("width", int, lambda v: 1 <= v <= MAX_WIDTH, f"integers in [1, {MAX_WIDTH}]"),
            (TRANSITION_FRACTION, (int, float), lambda v: 0 < v < 1, "numbers in (0, 1)")):
        dist = spec.search.space.get(key)
        if dist is not None and any(isinstance(v, bool) or not isinstance(v, kind) or not ok(v)
                                    for v in dist.values):
            raise ConfigError(f"search.space.{key}.{dist.kind}",
                              f"needs {allowed}, got {dist.values}")
    first = {k: d.values[0] for k, d in spec.search.space.items()}
    try:
        spec.run_config(first)
    except ConfigError as exc:
        raise ConfigError(_first_field(spec, exc.field), exc.message) from None
    for key, dist in spec.search.space.items():
        if key in ARCH_KEYS:
            continue
        for i, value in enumerate(dist.values):
            params: dict[str, Any] = {**first, key: value}
            kinds = CONDITIONAL.get(ALIASES.get(key, key))
            if kinds and not applies(key, str(params.get("method", spec.base_method()))):
                params["method"] = kinds[0]
            where = f"search.space.{key}.{dist.kind}" + (f"[{i}]" if dist.kind == "choice" else "")
            try:
                spec.run_config(params)
            except ConfigError as exc:
                raise ConfigError(where, exc.message) from None
            except TypeError as exc:
                raise ConfigError(where, f"bad value {value!r} ({exc})") from None
    if spec.resources.gpu == 0 and spec.base().get("device", "auto").startswith("cuda"):
        raise ConfigError("fixed.device", "device is cuda but resources.gpu is 0")


def _first_field(spec: SweepSpec, field: str) -> str:
    """Where a RunConfig error of the first configuration comes from: the space entry that
    set ``field`` (its first value), else ``fixed`` (or the top-level dataset/model)."""
    for key, dist in spec.search.space.items():
        if ALIASES.get(key, key) == field or (field == "arch" and key in ARCH_KEYS):
            return f"search.space.{key}.{dist.kind}" + ("[0]" if dist.kind == "choice" else "")
    if field in ("dataset", "model") and field not in spec.fixed:
        return field
    alias = next((a for a, f in ALIASES.items() if f == field and a in spec.fixed), field)
    return f"fixed.{alias}"


def expand_choices(doc: dict[str, Any]) -> dict[str, Any]:
    """Expand the shorthands ``paper:*`` (the paper's 18 architectures) and ``fixed:*`` (one
    fixed method per activation of the pool) inside ``choice`` lists."""
    space = (doc.get("search") or {}).get("space") if isinstance(doc.get("search"), dict) else None
    if not isinstance(space, dict):
        return doc
    doc = copy.deepcopy(doc)
    space = doc["search"]["space"]
    fixed = doc.get("fixed") if isinstance(doc.get("fixed"), dict) else {}
    for key, dist in space.items():
        if not (isinstance(dist, dict) and isinstance(dist.get("choice"), list)):
            continue
        out: list[Any] = []
        for value in dist["choice"]:
            if value == "paper:*" and ALIASES.get(key, key) == "arch":
                out += [f"paper:{name}" for name in PAPER_ARCHITECTURES]
            elif value == "fixed:*" and key == "method":
                out += [f"fixed:{a}" for a in resolve_pool(fixed.get("pool") or "paper",
                                                           "fixed.pool")]
            else:
                out.append(value)
        dist["choice"] = out
    return doc


def parse_spec(doc: Any) -> SweepSpec:
    """Validate a spec document (a mapping) into a :class:`SweepSpec`."""
    if not isinstance(doc, dict):
        raise ConfigError("spec", "the YAML must be a mapping of fields (name, seeds, search, ...)")
    doc = expand_choices(doc)
    try:
        spec = SweepSpec.model_validate(doc)
    except ValidationError as exc:
        raise _from_pydantic(exc) from None
    _check_configs(spec)
    return spec
