"""Tests of connector templates (input and output rendering), required fields and masking."""

from __future__ import annotations

import copy

import pytest
from google.protobuf import struct_pb2

from servers.connector import templates
from servers.connector.templates import (
    TemplateError,
    dict_to_struct,
    mask,
    missing_fields,
    py_to_value,
    render_input,
    render_output,
    struct_to_dict,
    value_to_py,
)

CONTEXT = {
    "ticket": {"id": 42, "title": "Printer on fire", "tags": ["hw", "urgent"], "customer": {"phone": "555"}},
    "user": {"name": "Alice", "email": "alice@example.com", "admin": False},
    "score": 0.5,
    "nothing": None,
}


def test_whole_placeholders_keep_their_json_type() -> None:
    template = {
        "id": "{{context.ticket.id}}",
        "ticket": "{{ context.ticket }}",
        "tags": "{{context.ticket.tags}}",
        "admin": "{{context.user.admin}}",
        "score": "{{context.score}}",
        "nothing": "{{context.nothing}}",
        "first_tag": "{{context.ticket.tags.0}}",
        "all": "{{context}}",
    }
    out = render_input(template, CONTEXT)
    assert out["id"] == 42
    assert out["ticket"] == CONTEXT["ticket"]
    assert out["tags"] == ["hw", "urgent"]
    assert out["admin"] is False
    assert out["score"] == 0.5
    assert out["nothing"] is None
    assert out["first_tag"] == "hw"
    assert out["all"] == CONTEXT


def test_other_values_are_copied_and_lists_are_walked() -> None:
    template = {
        "constant": 7,
        "flag": True,
        "nested": {"list": ["{{context.user.name}}", 1, {"deep": "{{context.ticket.id}}"}]},
        "n8n_expression": "{{ $json.body }}",
    }
    out = render_input(template, CONTEXT)
    assert out == {
        "constant": 7,
        "flag": True,
        "nested": {"list": ["Alice", 1, {"deep": 42}]},
        "n8n_expression": "{{ $json.body }}",
    }


def test_embedded_placeholders_interpolate_text() -> None:
    template = {
        "greeting": "Hello {{context.user.name}}, ticket #{{ context.ticket.id }}!",
        "mixed": "{{context.user.admin}}/{{context.nothing}}/{{context.ticket.tags}}/{{context.score}}",
    }
    out = render_input(template, CONTEXT)
    assert out["greeting"] == "Hello Alice, ticket #42!"
    assert out["mixed"] == 'false//["hw","urgent"]/0.5'


def test_result_placeholders_in_an_input_template_are_literal_text() -> None:
    assert render_input({"x": "{{result.a}}"}, CONTEXT) == {"x": "{{result.a}}"}


def test_missing_input_path_raises_with_the_path() -> None:
    with pytest.raises(TemplateError) as err:
        render_input({"a": {"b": ["{{context.ticket.owner.id}}"]}}, CONTEXT)
    assert err.value.path == "context.ticket.owner.id"
    with pytest.raises(TemplateError) as err:
        render_input({"a": "Hi {{context.user.nickname}}"}, CONTEXT)
    assert err.value.path == "context.user.nickname"
    with pytest.raises(TemplateError):  # indexing past the end of a list
        render_input({"a": "{{context.ticket.tags.5}}"}, CONTEXT)


def test_empty_template_sends_a_copy_of_the_context() -> None:
    for empty in (None, {}, struct_pb2.Struct()):
        out = render_input(empty, CONTEXT)
        assert out == CONTEXT
        out["ticket"]["id"] = 0
        assert CONTEXT["ticket"]["id"] == 42


def test_rendering_never_shares_objects_with_the_context() -> None:
    before = copy.deepcopy(CONTEXT)
    out = render_input({"t": "{{context.ticket}}"}, CONTEXT)
    out["t"]["tags"].append("x")
    assert before == CONTEXT


def test_struct_templates_render_whole_numbers_as_int() -> None:
    template = dict_to_struct({"id": "{{context.ticket.id}}", "limit": 10, "ratio": 0.25})
    assert render_input(template, CONTEXT) == {"id": 42, "limit": 10, "ratio": 0.25}


def test_output_template_reads_result_and_tolerates_missing_paths() -> None:
    result = {"summary": "ok", "items": [{"name": "a"}], "meta": {"took": 3}}
    template = {
        "summary": "{{result.summary}}",
        "first": "{{result.items.0.name}}",
        "whole": "{{result}}",
        "missing": "{{result.nope.deeper}}",
        "text": "took {{result.meta.took}} s, missing '{{result.nope}}'",
        "context_is_literal": "{{context.user}}",
    }
    out = render_output(template, result)
    assert out == {
        "summary": "ok",
        "first": "a",
        "whole": result,
        "missing": None,
        "text": "took 3 s, missing ''",
        "context_is_literal": "{{context.user}}",
    }
    assert render_output(None, [1, 2]) == [1, 2]
    assert render_output({}, "plain") == "plain"
    assert render_output({"x": "{{result.a}}"}, "not an object") == {"x": None}


def test_missing_fields_reports_absent_and_null_paths_in_order() -> None:
    assert missing_fields(CONTEXT, ["ticket.id", "user.name"]) == []
    assert missing_fields(
        CONTEXT, ["user.phone", "ticket.id", "nothing", "ticket.tags.1", "ticket.tags.9"]
    ) == [
        "user.phone",
        "nothing",
        "ticket.tags.9",
    ]
    assert missing_fields({}, ["a"]) == ["a"]


def test_mask_replaces_paths_and_secret_looking_keys_in_a_copy() -> None:
    value = {
        "user": {"email": "a@b.c", "name": "A"},
        "customers": [{"ssn": "1", "id": 1}, {"ssn": "2", "id": 2}],
        "headers": {"Authorization": "Bearer x", "X-Api-Key": "k", "Content-Type": "json"},
        "nested": [{"Password": "p", "refresh-token": "r", "webhook_secret": "w", "max_tokens": 5}],
        "items": ["a", "b", "c"],
    }
    before = copy.deepcopy(value)
    out = mask(value, ["user.email", "customers.ssn", "items.1", "not.there"])
    assert value == before
    assert out["user"] == {"email": "***", "name": "A"}
    assert out["customers"] == [{"ssn": "***", "id": 1}, {"ssn": "***", "id": 2}]
    assert out["headers"] == {"Authorization": "***", "X-Api-Key": "***", "Content-Type": "json"}
    assert out["nested"] == [
        {"Password": "***", "refresh-token": "***", "webhook_secret": "***", "max_tokens": 5}
    ]
    assert out["items"] == ["a", "***", "c"]
    assert "not" not in out


def test_mask_keys_can_be_replaced_and_whole_objects_are_masked() -> None:
    value = {"token": "t", "card": {"number": "4111", "cvc": "1"}}
    assert mask(value, ["card"], also_keys=frozenset()) == {"token": "t", "card": "***"}
    assert mask(value, [], also_keys=frozenset({"cvc"})) == {
        "token": "t",
        "card": {"number": "4111", "cvc": "***"},
    }
    assert mask("scalar", []) == "scalar"


def test_template_problems_find_malformed_and_misplaced_placeholders() -> None:
    template = {
        "ok": "{{context.a.b}}",
        "bad": "{{context.a..b}}",
        "wrong_root": ["x", "{{ result.a }}"],
        "n8n": "{{ $json.a }}",
    }
    problems = templates.template_problems(template, "context")
    assert len(problems) == 2
    assert problems[0].startswith("bad: {{context.a..b}} is not a placeholder")
    assert problems[1] == "wrong_root[1]: {{ result.a }} must read from context"


def test_struct_and_value_conversions_round_trip() -> None:
    doc = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": {}}}
    assert struct_to_dict(dict_to_struct(doc)) == doc
    assert struct_to_dict(None) == {}
    assert value_to_py(py_to_value([1, {"x": 2}])) == [1, {"x": 2}]
    assert value_to_py(None) is None
    assert value_to_py(struct_pb2.Value()) is None
    with pytest.raises(ValueError):
        py_to_value({1, 2})
