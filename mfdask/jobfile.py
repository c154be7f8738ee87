"""Model hyper-parameters from command-line flags and TOML job files, checked before a fit.

A training job takes its settings from a TOML file, from flags, or both (flags win)::

    # als.toml
    model = "als"
    train = "out/prepared/split/train"
    output = "out/models/als"

    [params]
    factors = 64
    regularization = 0.05
    iterations = 15

    mfdask train --config als.toml --param iterations=20

Every value is checked against the model's constructor before any cluster starts, so a
typo costs a second, not a training run: an unknown name is rejected with the valid
names (and the closest one), a value of the wrong type with the expected type, and the
model's own ``_validate_params`` names an out-of-range value and its allowed range.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mfdask.errors import JobFileError
from mfdask.models.base import FactorModel
from mfdask.models.registry import model_class

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

JOB_KEYS = ("model", "train", "validation", "output", "params")
"""Top-level keys of a training job file."""


def load_job_file(path: str | os.PathLike[str], keys: Iterable[str] = JOB_KEYS) -> dict[str, Any]:
    """Parse a TOML job file and reject keys other than ``keys``.

    Raises
    ------
    JobFileError
        The file is missing, is not valid TOML, or has an unknown key.
    """
    p = Path(path)
    if not p.is_file():
        raise JobFileError(f"job file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobFileError(f"job file {p} is not valid TOML: {exc}") from exc
    allowed = list(keys)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise JobFileError(f"job file {p} has unknown key(s) {unknown}; allowed: {allowed}")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise JobFileError(f"job file {p}: `params` must be a table ([params]), got {params!r}")
    return data


def parse_param_flags(flags: Iterable[str]) -> dict[str, str]:
    """``["factors=64", "alpha=2"]`` -> ``{"factors": "64", "alpha": "2"}`` (values as text).

    Raises
    ------
    JobFileError
        A flag without ``=`` or with an empty name, or a name given twice.
    """
    out: dict[str, str] = {}
    for flag in flags:
        name, sep, value = flag.partition("=")
        name = name.strip()
        if not sep or not name:
            raise JobFileError(f"--param {flag!r} is not NAME=VALUE (e.g. --param factors=64)")
        if name in out:
            raise JobFileError(f"--param {name} is given twice")
        out[name] = value.strip()
    return out


def _kinds(cls: type[FactorModel], name: str) -> tuple[set[str], bool]:
    """The scalar kinds (``int``, ``float``, ``bool``, ``str``) a parameter accepts."""
    param = inspect.signature(cls.__init__).parameters[name]
    annotation = param.annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if not text or text is inspect.Parameter.empty:
        text = type(param.default).__name__ if param.default is not None else ""
    kinds = {k for k in ("bool", "int", "float", "str") if k in str(text).replace(" ", "")}
    nullable = "None" in str(text) or param.default is None
    if not kinds and param.default is not None:
        kinds = {type(param.default).__name__}
    return kinds, nullable


def _describe(kinds: set[str], nullable: bool) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    order = [k for k in ("int", "float", "bool", "str") if k in kinds]
    if "int" in kinds and "float" in kinds:
        order.remove("int")
    text = " or ".join(names[k] for k in order) or "a value"
    return text + (" or none" if nullable else "")


def _from_text(value: str, kinds: set[str], nullable: bool) -> Any:
    low = value.lower()
    if nullable and low in ("none", "null", ""):
        return None
    if "bool" in kinds and low in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return low in ("true", "yes", "1", "on")
    if "int" in kinds:
        try:
            return int(value)
        except ValueError:
            pass
    if "float" in kinds:
        try:
            return float(value)
        except ValueError:
            pass
    if "str" in kinds:
        return value
    raise ValueError


def _from_toml(value: Any, kinds: set[str], nullable: bool) -> Any:
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
        raise ValueError
    if isinstance(value, int):
        if "int" in kinds:
            return value
        if "float" in kinds:
            return float(value)
        raise ValueError
    if isinstance(value, float):
        if "float" in kinds:
            return value
        if "int" in kinds and math.isfinite(value) and value.is_integer():
            return int(value)
        raise ValueError
    if isinstance(value, str):
        if "str" in kinds:
            return value
        if nullable and value.lower() in ("none", "null"):
            return None
        raise ValueError
    raise ValueError


def coerce_params(
    cls: type[FactorModel],
    values: Mapping[str, Any],
    source: str = "--param",
    *,
    text: bool = True,
) -> dict[str, Any]:
    """Check names against ``cls``'s constructor and convert values to its types.

    With ``text`` the values are strings from flags and are parsed (``none`` for an
    optional parameter, ``true``/``false`` for a flag); otherwise they are TOML values
    and must already have a fitting type (an integer is accepted for a float parameter,
    a whole float for an int one). ``source`` prefixes the error messages.

    Raises
    ------
    JobFileError
        An unknown name (with the valid names and the closest match) or a value of the
        wrong type (with the expected type and the default).
    """
    valid = cls._param_names()
    renamed = cls.renamed_params  # old names pass through: the model warns and maps them
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in valid and name not in renamed:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise JobFileError(
                f"{source}: {cls.__name__} has no hyper-parameter {name!r}{hint}; "
                f"valid: {', '.join(valid)}"
            )
        kinds, nullable = _kinds(cls, renamed.get(name, name))
        try:
            if text:
                out[name] = _from_text(str(value), kinds, nullable)
            else:
                out[name] = _from_toml(value, kinds, nullable)
        except ValueError:
            default = inspect.signature(cls.__init__).parameters[renamed.get(name, name)].default
            raise JobFileError(
                f"{source}: {cls.__name__} {name} must be {_describe(kinds, nullable)} "
                f"(default {default!r}), got {value!r}"
            ) from None
    return out


def build_model(name: str, params: Mapping[str, Any] | None = None) -> FactorModel:
    """An unfitted model ``name`` with ``params``, checked by the model's own validation.

    Raises
    ------
    ValueError
        Unknown model name (the registry lists the options), or a value the model
        rejects (its message names the parameter and the allowed range).
    """
    cls = model_class(name)
    model = cls(**dict(params or {}))
    try:
        model._validate_params()
    except ValueError as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from exc
    return model


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'  # read back as None for an optional parameter (see _from_toml)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JobFileError(f"cannot write the non-finite value {value!r} to a job file")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))  # a JSON string is a TOML basic string
    raise JobFileError(f"cannot write {value!r} ({type(value).__name__}) to a job file")


def dump_job_file(
    path: str | os.PathLike[str],
    job: Mapping[str, Any],
    comment: str = "",
) -> Path:
    """Write a training job file that :func:`load_job_file` (``mfdask train --config``)
    reads back: top-level ``model``, ``train``, ``validation``, ``output`` and a
    ``[params]`` table; ``comment`` lines first. Written atomically.

    Raises
    ------
    JobFileError
        An unknown key or a value TOML cannot hold.
    """
    unknown = sorted(set(job) - set(JOB_KEYS))
    if unknown:
        raise JobFileError(f"a job file has no key(s) {unknown}; allowed: {list(JOB_KEYS)}")
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    for key in JOB_KEYS:
        if key != "params" and job.get(key) is not None:
            lines.append(f"{key} = {_toml_value(job[key])}")
    lines += ["", "[params]"]
    for name, value in dict(job.get("params") or {}).items():
        lines.append(f"{name} = {_toml_value(value)}")
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, p)
    return p
