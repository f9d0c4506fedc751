"""Config documentation generated from the dataclasses: every dotted key, its type, default and doc.

Backs ``python -m ris_dist.train --help``, ``--list-keys`` and ``--print-config``. The docs are
the field docstrings in the code (read once by :func:`~ris_dist.config.schema.field_docs`), so
there is no second copy to drift. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, get_args, get_origin, get_type_hints

import yaml

from .schema import _type_name, field_docs, to_dict

#: Placeholder for the free-form key of a ``dict[str, <dataclass>]`` field (``ramps.<name>.start_step``).
NAME_PLACEHOLDER = "<name>"


class _Missing:
    def __init__(self, label: str):
        self.label = label

    def __repr__(self) -> str:
        return self.label


REQUIRED = _Missing("required")
"""Default of a field that has none (it must be given)."""
FROM_FILE = _Missing("(from the file)")
"""Default of a free-form key: the value in the file it overrides (the system YAML)."""


@dataclass(frozen=True)
class KeyDoc:
    """One documented config key."""

    key: str
    """Dotted key as an override takes it (``data.batch_size``)."""
    type: str
    """Readable type annotation."""
    default: Any
    """Default value (REQUIRED when the key must be given); for a section, its dataclass defaults."""
    doc: str
    """The field's docstring on one line ("" when it has none)."""
    section: bool = False
    """A nested config (its own keys follow it)."""


def _dataclass_values(tp: Any) -> type | None:
    """The dataclass ``D`` of a ``dict[str, D]`` annotation, else None."""
    if get_origin(tp) is dict:
        args = get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]
    return None


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default(field: dataclasses.Field, parent: Any, missing: _Missing) -> Any:
    if parent is not None:
        return getattr(parent, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return missing


def describe_keys(cls: type, defaults: Any = None, prefix: str = "",
                  free_form: Mapping[str, type] | None = None, missing: _Missing = REQUIRED) -> Iterator[KeyDoc]:
    """Every key reachable from dataclass ``cls``, depth first, in field order.

    ``defaults`` is an instance whose values are shown as defaults (else the fields' own);
    ``free_form`` maps a ``dict[str, Any]`` key to the dataclass that documents its keys
    (``{"system_overrides": SystemConfig}``), whose keys are then listed below it with the
    default FROM_FILE (a key that is not overridden keeps the file's value).
    """
    free_form = free_form or {}
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key, tp = prefix + field.name, hints[field.name]
        value = missing if missing is FROM_FILE else _default(field, defaults, missing)
        inner = _strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield KeyDoc(key, inner.__name__, value, docs.get(field.name, ""), section=True)
            yield from describe_keys(inner, None if isinstance(value, _Missing) or value is None else value,
                                     key + ".", free_form, missing)
            continue
        yield KeyDoc(key, _type_name(tp).replace("NoneType", "None"), value, docs.get(field.name, ""))
        item_cls = _dataclass_values(tp)
        if item_cls is not None:
            yield from describe_keys(item_cls, None, f"{key}.{NAME_PLACEHOLDER}.", free_form, missing)
        elif key in free_form:
            yield from describe_keys(free_form[key], None, key + ".", free_form, FROM_FILE)


def _flow(value: Any) -> str:
    """One-line YAML of a plain value; read back by the config loader as the same value."""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**9, sort_keys=False)
    # safe_dump closes a document that is a plain scalar with an explicit end marker.
    return text.rstrip("\n").removesuffix("\n...")


def _comment(doc: str) -> str:
    return f"  # {doc}" if doc else ""


def commented_yaml(obj: Any, indent: int = 0) -> list[str]:
    """YAML lines of a config dataclass, each field followed by its doc as a comment.

    Loading the lines back gives the same config (``yaml`` ignores comments).
    """
    pad = "  " * indent
    docs = field_docs(type(obj))
    lines: list[str] = []
    for field in dataclasses.fields(obj):
        value, doc = getattr(obj, field.name), docs.get(field.name, "")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{field.name}:{_comment(doc)}")
            lines.extend(commented_yaml(value, indent + 1))
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            lines.append(f"{pad}{field.name}:{_comment(doc)}")
            for name, item in value.items():
                lines.append(f"{pad}  {_flow(name)}:")
                lines.extend(commented_yaml(item, indent + 2))
        else:
            lines.append(f"{pad}{field.name}: {_flow(value)}{_comment(doc)}")
    return lines


def _format_default(value: Any) -> str:
    if isinstance(value, _Missing):
        return value.label
    if dataclasses.is_dataclass(value):
        return ""
    return _flow(value)


def list_keys_text(keys: Iterator[KeyDoc] | list[KeyDoc], width: int = 100) -> str:
    """``key  type = default`` then the doc, indented; sections are marked by their class name."""
    out: list[str] = []
    for k in keys:
        if k.section:
            head = f"{k.key}  [section {k.type}]"
        else:
            head = f"{k.key}  {k.type} = {_format_default(k.default)}"
        out.append(head)
        if k.doc:
            out.extend(textwrap.wrap(k.doc, width=width, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(out)


def sections_text(cls: type, width: int = 100) -> str:
    """The nested sections of ``cls`` with their docs, then its other top-level keys (for ``--help``)."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    sections = [f for f in fields if dataclasses.is_dataclass(_strip_optional(hints[f.name]))
                or _dataclass_values(hints[f.name]) is not None]
    name_width = max(len(f.name) for f in sections) + 2
    lines = ["config sections (dotted.key=value overrides; --list-keys shows every key):"]
    for f in sections:
        lines.extend(textwrap.wrap(docs.get(f.name, ""), width=width, initial_indent=f"  {f.name:<{name_width}}",
                                   subsequent_indent=" " * (name_width + 2)) or [f"  {f.name}"])
    others = ", ".join(f.name for f in fields if f not in sections)
    lines.extend(textwrap.wrap(f"top-level keys: {others}", width=width, subsequent_indent="  "))
    return "\n".join(lines)
