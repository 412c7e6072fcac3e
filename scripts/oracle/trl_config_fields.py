#!/usr/bin/env python3
"""Dump every field that `trl dpo --config run.yaml` (TRL 1.16) accepts.

Run with the oracle venv:

    /tmp/oracle/venv/bin/python scripts/oracle/trl_config_fields.py

The DPO script's parser (trl/scripts/dpo.py `make_parser`) is built from
(ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig); DPOConfig
subclasses trl's _BaseConfig, which subclasses transformers' TrainingArguments.

For each dataclass field this writes: name, class (the class the parser fills:
ScriptArguments / DPOConfig / ModelConfig / DatasetMixtureConfig), owner (the
most-derived class in the MRO that declares the field, e.g. TrainingArguments,
_BaseConfig or DPOConfig), overrides (base classes that also declare it, i.e.
TRL changed the default/help), default (JSON-able; "<required>" if none),
type (the resolved annotation as a string), help (first sentence of the help
metadata) and deprecated (true if the help text says so).

Output: scripts/oracle/trl_1.16_config_fields.json, a list sorted by (class, name).
"""

import dataclasses
import json
import math
import os
import re
import typing

import peft
import transformers
import trl
from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_1.16_config_fields.json")


def jsonable(value):
    if value is dataclasses.MISSING:
        return "<required>"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return repr(value)
    if hasattr(value, "value") and type(value).__module__ != "builtins" and hasattr(type(value), "__members__"):
        return value.value  # Enum -> its value
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, (list, tuple)):
            return [jsonable(v) for v in value]
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        return repr(value)


def type_string(tp):
    s = repr(tp) if not isinstance(tp, type) else tp.__name__
    s = s.replace("typing.", "").replace("NoneType", "None")
    s = re.sub(r"<class '([\w.]+)'>", r"\1", s)
    s = re.sub(r"<enum '(\w+)'>", r"\1", s)
    return s


def first_sentence(text):
    if not text:
        return ""
    text = " ".join(text.split())
    # split at ". " / "? " / "! " followed by an upper-case letter, a backtick or a quote, not after "e.g."/"i.e."
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!etc)[.!?](?=\s+[A-Z`'\"(\[])", text)
    return text[: m.end()] if m else text


def owner_classes(cls, name):
    owners = [
        c.__name__
        for c in cls.__mro__
        if dataclasses.is_dataclass(c) and name in c.__dict__.get("__annotations__", {})
    ]
    return owners


def dump(cls):
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        owners = owner_classes(cls, f.name)
        help_text = f.metadata.get("help", "")
        rows.append(
            {
                "name": f.name,
                "class": cls.__name__,
                "owner": owners[0] if owners else cls.__name__,
                "overrides": owners[1:],
                "default": jsonable(default),
                "type": type_string(hints.get(f.name, f.type)),
                "help": first_sentence(help_text),
                "deprecated": bool(re.search(r"deprecat", help_text, re.I)),
                "init": f.init,
            }
        )
    return rows


def main():
    rows = []
    for cls in (DPOConfig, ModelConfig, ScriptArguments, DatasetMixtureConfig):
        rows += dump(cls)
    rows.sort(key=lambda r: (r["class"], r["name"]))
    # sanity: no field name is shared between the parser's dataclasses (argparse dest collision)
    names = [r["name"] for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    with open(OUT, "w") as fh:
        json.dump(rows, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    counts = {}
    for r in rows:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    print(
        f"trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}: "
        f"{len(rows)} fields {counts} -> {OUT}"
    )
    if dup:
        print("WARNING: field names shared between classes:", dup)


if __name__ == "__main__":
    main()
