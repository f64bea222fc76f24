"""The run file's schema errors as a person reads them: one line per key, with its path in the
file (`transfer[0].basline`), what was expected and, for a misspelt key, the closest allowed
one; a value that fits no member of a union is one line naming the types it may have, never
pydantic's member tags as if they were keys."""

import difflib
import re

from pydantic import BaseModel


def _location(loc) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "json-or-python") or "[" in str(part):
            continue  # pydantic's names of validator steps, not keys
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_at(schema, loc):
    """The model whose fields the key at `loc` is one of (for 'did you mean')."""
    model = schema
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            inner = (candidate, *getattr(candidate, "__args__", ()))
            found = next((c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)),
                         None)
            if found:
                model = found
                break
        else:
            return None
    return model


def _message(schema, error) -> str:
    loc, kind = error["loc"], error["type"]
    where = _location(loc) or "the file"
    if kind == "extra_forbidden":
        model = _model_at(schema, loc)
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{where}: unknown key{hint} (allowed: {', '.join(allowed)})"
    text = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if isinstance(given, (dict, BaseModel)) else f", got {given!r}"[:120]
    return f"{where}: {text}{shown}"


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)$|^[a-z-]+\[")
_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}


def messages(schema, errors) -> list:
    """One line per key: a value that fits no member of a union (StrictStr | StrictInt | ...)
    is one line naming the key and the types it may have, not one per member under the
    members' names as if they were keys."""
    lines, unions = [], {}
    for error in errors:
        loc = error["loc"]
        if loc and isinstance(loc[-1], str) and _UNION_TAG.match(loc[-1]):
            unions.setdefault(loc[:-1], (error, []))[1].append(loc[-1])
        else:
            lines.append(_message(schema, error))
    for loc, (error, tags) in unions.items():
        kinds = " or ".join(dict.fromkeys(_TYPE_WORDS.get(t, t) for t in tags))
        shown = f", got {error.get('input')!r}"[:120]
        lines.append(f"{_location(loc) or 'the file'}: should be {kinds}{shown}")
    return lines
