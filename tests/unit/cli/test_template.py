"""The --format templates: the subset of Go's text/template quiltctl takes, and one-line refusals of the rest."""

from __future__ import annotations

from typing import Any

import pytest

from quilt_agent.cli.template import (
    MISSING,
    FieldError,
    Record,
    TemplateError,
    align,
    camel_split,
    check_fields,
    go_text,
    header_name,
    is_json,
    parse,
    render,
)


def item(ident: str, name: str, **extra: Any) -> Record:
    fields = {"ID": ident, "Names": name, "Labels": {"app": name}, "Ports": ["80/tcp", "443/tcp"],
              "State": Record("state", {"Status": "running", "Pid": 42, "Running": True}), **extra}
    return Record("container", fields, {"Size": "Quilt does not measure a container's size"})


ITEMS = [item("abc123", "web"), item("def456", "database")]


def run(text: str, items: list[Any] = ITEMS, **kwargs: Any) -> str:
    return render(parse(text), items, **kwargs)


def test_a_field_prints_once_per_item_on_its_own_line() -> None:
    assert run("{{.ID}}") == "abc123\ndef456\n"
    assert run("{{.ID}}  {{.Names}}") == "abc123  web\ndef456  database\n"


def test_nested_fields_reach_into_records() -> None:
    assert run("{{.State.Status}} {{.State.Pid}} {{.State.Running}}") == "running 42 true\n" * 2


def test_values_print_as_go_prints_them() -> None:
    assert go_text(["a", "b"]) == "[a b]"
    assert go_text({"b": "2", "a": "1"}) == "map[a:1 b:2]"
    assert (go_text(True), go_text(False), go_text(None), go_text(MISSING)) == ("true", "false", "<nil>",
                                                                                "<no value>")
    assert (go_text(100.0), go_text(0.5), go_text(7)) == ("100", "0.5", "7")
    assert run("{{.Labels}} {{.Ports}}", ITEMS[:1]) == "map[app:web] [80/tcp 443/tcp]\n"


def test_a_missing_map_key_is_no_value_as_in_go() -> None:
    assert run("{{.Labels.team}}", ITEMS[:1]) == "<no value>\n"
    assert run('{{index .Labels "team"}}', ITEMS[:1]) == "<no value>\n"


def test_json_of_the_item_and_of_a_field_is_compact() -> None:
    assert run("{{json .Labels}}", ITEMS[:1]) == '{"app":"web"}\n'
    assert run("{{json .State}}", ITEMS[:1]) == '{"Status":"running","Pid":42,"Running":true}\n'
    assert run("{{json .}}", [Record("x", {"Name": "é<&>"})]) == '{"Name":"é<&>"}\n'


def test_json_alone_means_the_verbs_own_json() -> None:
    assert is_json("json") and is_json("{{json .}}") and is_json(" {{ json . }} ") and is_json("{{json}}")
    assert not is_json("{{json .Labels}}") and not is_json("table {{json .}}") and not is_json("{{.ID}}")


def test_index_lower_upper_join_len_and_pipes() -> None:
    assert run('{{index .Labels "app"}}') == "web\ndatabase\n"
    assert run("{{upper .Names}} {{.Names | lower}} {{.ID | upper | lower}}", ITEMS[:1]) == "WEB web abc123\n"
    assert run('{{join .Ports ","}} {{len .Ports}} {{.Ports | len}}', ITEMS[:1]) == "80/tcp,443/tcp 2 2\n"
    assert run("{{index .Ports 1}}", ITEMS[:1]) == "443/tcp\n"


def test_range_runs_its_body_for_each_element() -> None:
    assert run("{{range .Ports}}[{{.}}]{{end}}", ITEMS[:1]) == "[80/tcp][443/tcp]\n"
    assert run("{{range .Labels}}{{.}};{{end}}", [Record("x", {"Labels": {"b": "2", "a": "1"}})]) == "1;2;\n"


def test_a_top_level_range_over_the_dot_runs_once_over_the_list() -> None:
    assert run("{{range .}}{{.Names}},{{end}}") == "web,database,\n"


def test_escapes_and_trim_markers() -> None:
    assert run(r"{{.ID}}\t{{.Names}}\n", ITEMS[:1]) == "abc123\tweb\n"
    assert run("{{.ID -}}   {{- .Names}}", ITEMS[:1]) == "abc123web\n"
    assert run("{{/* a comment */}}{{.ID}}", ITEMS[:1]) == "abc123\n"
    assert run('{{index .Labels "}}"}}', ITEMS[:1]) == "<no value>\n"  # "}}" inside a string ends nothing


def test_table_prints_a_header_of_the_fields_and_aligns_the_columns() -> None:
    out = run("table {{.ID}} {{.Names}} {{.State.Status}}", header_names={"ID": "CONTAINER ID"})
    assert out.splitlines() == [
        "CONTAINER ID  NAMES       STATUS",
        "abc123        web         running",
        "def456        database    running",
    ]


def test_table_columns_are_at_least_12_wide_and_2_past_the_widest_cell() -> None:
    out = run(r"table {{.Names}}\t{{.ID}}", [item("1", "a-rather-long-name"), item("2", "b")])
    assert out.splitlines() == ["NAMES               ID", "a-rather-long-name  1", "b                   2"]


def test_table_headers_go_through_the_same_functions() -> None:
    assert run("table {{lower .Names}} {{index .Labels \"app\"}}", ITEMS[:1]).splitlines()[0] == "names       APP"


def test_table_without_heading_has_only_the_rows() -> None:
    assert run("table {{.ID}} {{.Names}}", heading=False).splitlines() == ["abc123      web",
                                                                           "def456      database"]


def test_headers_split_field_names_at_their_words() -> None:
    assert [header_name(n) for n in ("RunningFor", "CreatedAt", "ImageID", "IPAddress", "ID", "Names")] == [
        "RUNNING FOR", "CREATED AT", "IMAGE ID", "IP ADDRESS", "ID", "NAMES"]
    assert camel_split("IPv6Enabled") == ["I", "Pv", "6", "Enabled"]  # as Podman's camelcase splits it


def test_align_keeps_the_text_after_a_lines_last_tab_unpadded() -> None:
    assert align("a\tb\nccc\td\n") == "a           b\nccc         d\n"


def test_a_field_the_item_lacks_names_it_and_lists_the_fields() -> None:
    with pytest.raises(TemplateError, match=r"no field \.Foo in a container \(its fields: \.ID, \.Names"):
        run("{{.Foo}}")


def test_a_podman_field_quilt_lacks_says_why() -> None:
    with pytest.raises(TemplateError, match="no field .Size in a container: Quilt does not measure"):
        run("{{.Size}}")


def test_nested_field_errors_name_the_path() -> None:
    with pytest.raises(TemplateError, match=r"no field \.State\.Exit in a state"):
        run("{{.State.Exit}}")
    with pytest.raises(TemplateError, match=r"can't read field \.x of \.Names: it is a string"):
        run("{{.Names.x}}")


@pytest.mark.parametrize(("text", "says"), [
    ("{{if .ID}}x{{end}}", "'if' is not supported"),
    ("{{with .State}}{{.Pid}}{{end}}", "'with' is not supported"),
    ('{{printf "%s" .ID}}', "function 'printf' is not supported"),
    ("{{$x := .ID}}", "variables"),
    ("{{range $i, $e := .Ports}}{{end}}", "variables are not supported"),
    ("{{(.ID)}}", "parentheses are not supported"),
    ("{{.ID", "unclosed action"),
    ("{{range .Ports}}", "without its '{{end}}'"),
    ("{{.ID}}{{end}}", "'{{end}}' without a '{{range}}'"),
    ("{{}}", "empty action"),
    ("{{.ID .Names}}", "a value cannot take arguments"),
    ("{{upper}}", "upper takes 1 argument, not 0"),
    ('{{index .Labels}}', "index takes at least 2 arguments"),
    ("{{.ID | .Names}}", "only a function can follow '|'"),
    ("{{upper lower .ID}}", "function 'lower' used as an argument"),
    ('{{"unterminated}}', "unclosed action '{{\"unterminated}}': no '}}'"),
    ('{{index .Labels "a}}', "unclosed action"),
    ("{{/* open }}", "unclosed comment"),
    ("{{range}}{{end}}", "needs something to range over"),
    ("{{Names}}", "function 'Names' is not supported"),
    ("{{.ID!}}", "'.ID!' is not a field"),
])
def test_what_is_not_supported_is_refused_in_one_line_naming_it(text: str, says: str) -> None:
    with pytest.raises(TemplateError) as raised:
        run(text)
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_range_over_a_string_is_an_error() -> None:
    with pytest.raises(TemplateError, match="range can't iterate over 'web'"):
        run("{{range .Names}}{{end}}")


def test_index_out_of_range_is_an_error() -> None:
    with pytest.raises(TemplateError, match="index 5 out of range"):
        run("{{index .Ports 5}}")


def test_check_fields_refuses_only_the_fields_quilt_lacks_on_an_example() -> None:
    example = item("", "")
    with pytest.raises(FieldError, match="no field .Size in a container: Quilt does not measure"):
        check_fields(parse("{{.ID}} {{.Size}}"), example)
    check_fields(parse("{{.Whatever}} {{index .Ports 9}} {{range .}}{{.X}}{{end}}"), item("", ""))
