"""Row templates: parsed once at plan time, plain {column} fields only, rendered without str.format."""

import pytest

from embedrank.config import ConfigError, load_config
from embedrank.templates import parse_template, render, row_text, template_fields


def test_fields_and_render():
    template = "{title}\n{body} {{literal}} {title}"
    assert template_fields(template) == ["title", "body"]
    assert render(template, {"title": "T", "body": None}) == "T\n {literal} T"
    assert render("{n}", {"n": 3}) == "3"


@pytest.mark.parametrize(
    "template", ["{text!r:>99999999}", "{text!s}", "{text:>5}", "{a.b}", "{a[0]}", "{}", "{text", "text}", "{ text}"]
)
def test_anything_but_plain_fields_is_a_config_error(template):
    with pytest.raises(ConfigError) as info:
        parse_template(template)
    assert str(info.value).startswith("input.template:")


@pytest.mark.parametrize("template", ["{text!r:>99999999}", "{text"])
def test_config_refuses_a_bad_template_naming_the_key(template):
    with pytest.raises(ConfigError, match="input.template"):
        load_config(None, ["input.uri=x", "output.uri=y", f"input.template={template}"])


def test_row_text_all_missing_is_null():
    class Section:
        template = "{a} {b}"
        text_column = "text"

    assert row_text({"a": None}, Section) is None
    assert row_text({"a": "x", "b": None}, Section) == "x "
