"""How a row's text is built from its columns: `text_column`, or a template such as "{title}\n{body}".

Templates are checked once, at plan time: only plain `{column}` fields are allowed (no conversions, format
specs, attribute or index access), `{{` and `}}` stand for braces, and anything else is a config error that
names the key. Rendering is then a plain join, never `str.format` on user input.
"""

from __future__ import annotations

import string

from .errors import ConfigError


def parse_template(template: str, key: str = "input.template") -> list[tuple[str, str | None]]:
    """[(literal text, column or None), ...]; raises ConfigError naming `key` for anything but plain fields."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # "Single '}' encountered", "expected '}' before end of string"
        raise ConfigError(
            f"{key}: {template!r} is not a valid template ({exc}); write columns as {{name}} and "
            "literal braces as {{{{ and }}}}"
        ) from None
    out = []
    for literal, name, spec, conversion in parts:
        if name is not None:
            plain = name.isidentifier() or (name and all(c.isalnum() or c in "_- " for c in name))
            if spec or conversion or not name or not plain or name.strip() != name:
                field = (
                    "{" + (name or "") + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                )
                raise ConfigError(
                    f"{key}: field {field} is not allowed; only plain column names such as {{title}} "
                    "(no conversions, format specs, attributes or indexes)"
                )
        out.append((literal, name))
    return out


def template_fields(template: str) -> list[str]:
    """The columns a template reads, in order of first use."""
    return list(dict.fromkeys(name for _, name in parse_template(template) if name))


def render(template: str, values: dict) -> str:
    """The template with each field replaced by its value (None: empty)."""
    return "".join(
        literal + ("" if name is None or values.get(name) is None else str(values[name]))
        for literal, name in parse_template(template)
    )


def text_columns(section) -> list[str]:
    """The columns a config section (input or corpus) builds its text from."""
    return template_fields(section.template) if section.template else [section.text_column]


def row_text(row: dict, section):
    """The text of a row (before the query instruction), or the raw bad value for `schema.text_problem`."""
    if section.template:
        values = {name: row.get(name) for name in template_fields(section.template)}
        if all(v is None for v in values.values()):
            return None
        return render(section.template, values)
    return row.get(section.text_column)
