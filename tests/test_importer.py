"""pnp-service import and claim: device lists become declarations, checked, and handed out in three forms.

The 200-device test runs the whole way: a generated CSV with two groups, imported to a file, served by a
listener on a loopback port and provisioned by the agent simulator.
"""

from __future__ import annotations

import pathlib

import logging
import os
import stat
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from conftest import EXAMPLE_DATASTORE, REPO, state_dump
from pnp_service import cli, importer, model, validation
from pnp_service.model import CONTROLLER_NS, NETCONF_NS, PNP_NS, Declaration, Unclaimed
from pnp_service.planner import file_template_loader, plan, template_variables
from pnp_service.simulator import AgentSimulator, SimulatedDevice

MD5 = "0123456789abcdef0123456789abcdef"
TEMPLATE = "hostname {{ hostname }}\nvlan {{ vlan }}\n{% for s in ntp_servers %}ntp server {{ s }}\n{% endfor %}"

GROUPS = """\
defaults:
  template-file: access.j2
  username: netops
  variables:
    ntp_servers: [192.0.2.1, 192.0.2.2]
groups:
  site-a:
    variables: {vlan: 100, gateway: 192.0.2.1}
  site-b:
    variables: {vlan: 200, gateway: 198.51.100.1}
  core:
    pid: C9500-24Y4C
    reload: false
"""


@pytest.fixture
def run(monkeypatch, capsys):
    """``pnp-service ARGS`` in this process: (exit status, stdout, stderr); the logging set-up is undone after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            for handler in list(root.handlers):
                root.removeHandler(handler)
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def templates(folder) -> None:
    (folder / "templates").mkdir(exist_ok=True)
    (folder / "templates" / "access.j2").write_text(TEMPLATE, encoding="utf-8")


def by_serial(items: list[importer.Imported]) -> dict[str, Declaration]:
    return {item.declaration.serial: item.declaration for item in items}


def fails(call, *args, **kwargs) -> list[str]:
    with pytest.raises(importer.ImportFailed) as caught:
        call(*args, **kwargs)
    return [str(problem) for problem in caught.value.problems]


# ----------------------------------------------------------------- YAML


def test_device_values_win_over_groups_in_order_over_defaults_and_variables_merge_by_name():
    text = """\
defaults:
  pid: C9300-24P
  template: "hostname {{ hostname }}\\n"
  variables: {domain: example.net, vlan: 1, syslog: 192.0.2.50}
groups:
  site: {pid: C9300-48P, variables: {vlan: 100, gateway: 192.0.2.1}}
  role: {variables: {vlan: 300}}
devices:
  - serial: SN1
    hostname: a
    group: [site, role]
    variables: {gateway: 192.0.2.254, syslog: ~}
  - serial: SN2
    hostname: b
    group: site
    pid: ~
"""
    found = by_serial(importer.devices_from_yaml(text, "d.yaml"))
    one, two = found["SN1"], found["SN2"]
    assert one.pid == "C9300-48P"
    assert dict(one.variables) == {"domain": "example.net", "vlan": "300", "gateway": "192.0.2.254"}
    assert dict(two.variables) == {"domain": "example.net", "vlan": "100", "syslog": "192.0.2.50", "gateway": "192.0.2.1"}
    assert two.pid == ""  # ~ clears what a level below set
    assert one.template == two.template == "hostname {{ hostname }}\n"


def test_yaml_types_become_typed_variables_and_reach_the_template_as_such():
    text = """\
devices:
  - serial: SN1
    hostname: a
    template: "{{ vlan + 1 }} {{ 'on' if poe else 'off' }} {{ servers | join('/') }} {{ ports | sum }} {{ name }}"
    variables: {vlan: 100, poe: yes, servers: [a, b], ports: [1, 2, 3], name: "007", ratio: 0.5}
"""
    [item] = importer.devices_from_yaml(text, "d.yaml")
    declaration = item.declaration
    assert dict(declaration.variable_types) == {"vlan": "number", "poe": "boolean", "servers": "list",
                                                "ports": "list", "ratio": "number"}
    assert dict(declaration.variables)["name"] == "007"  # a quoted string stays a string
    work = plan(declaration)
    assert work.steps[-1].params["config"] == "101 on a/b 6 007"
    assert template_variables(declaration)["ports"] == [1, 2, 3]


def test_text_fields_keep_what_was_written_not_what_yaml_makes_of_it():
    text = f"""\
devices:
  - serial: 0123
    password: 0777
    image: {{version: 17.10, url: cat9k.bin, md5: "{MD5.upper()}", reload-wait: 120}}
"""
    [item] = importer.devices_from_yaml(text, "d.yaml")
    declaration = item.declaration
    assert (declaration.serial, declaration.password, declaration.image_version) == ("0123", "0777", "17.10")
    assert declaration.image_md5 == MD5 and declaration.image_reload_wait == 120


def test_a_level_replaces_the_configuration_source_and_the_image_whole():
    text = f"""\
groups:
  g:
    template-file: access.j2
    image: {{version: "1", url: old.bin, md5: {MD5}, reload-wait: 300}}
devices:
  - serial: SN1
    group: g
    lines: ["hostname {{{{ hostname }}}}", "end"]
    hostname: a
    image: {{version: "2", url: new.bin, md5: {MD5}}}
  - serial: SN2
    group: g
    image: ~
    commands: [show version, show inventory]
"""
    found = by_serial(importer.devices_from_yaml(text, "d.yaml"))
    one, two = found["SN1"], found["SN2"]
    assert one.template_file == "" and one.template_lines == ((10, "hostname {{ hostname }}"), (20, "end"))
    assert (one.image_url, one.image_reload_wait) == ("new.bin", 60)  # nothing of the group's image is kept
    assert two.template_file == "access.j2" and not two.has_image
    assert two.commands == ((10, "show version"), (20, "show inventory"))


@pytest.mark.parametrize("text, expected", [
    ("devices:\n  - serial: FOC 1\n", "d.yaml:2: serial: 'FOC 1' is not a serial number"),
    ("devices:\n  - hostname: a\n", "d.yaml:2: serial: is required"),
    ("devices:\n  - serial: A\n  - serial: A\n", "d.yaml:3: serial: A is listed twice (first at d.yaml:2)"),
    ("devices:\n  - serial: A\n    group: [nope]\n", "d.yaml:2: group: 'nope' is not defined (groups: none)"),
    ("groups: {site-a: {}}\ndevices:\n  - serial: A\n    group: site-b\n", "did you mean site-a?"),
    ("devices:\n  - serial: A\n    hostnme: a\n", "d.yaml:3: hostnme: is not a field of a device (did you mean hostname?)"),
    ("devices:\n  - serial: A\n    image: {version: '1', url: u}\n", "d.yaml:3: image: needs md5 too"),
    ("devices:\n  - serial: A\n    image: {version: '1', url: u, md5: abc}\n", "image md5: 'abc' is not an MD5"),
    (f"devices:\n  - serial: A\n    image: {{version: '1', url: u, md5: {MD5}, reload-wait: 5}}\n",
     "image reload-wait: '5' is not a number of seconds from 10 to 3600"),
    ("devices:\n  - serial: A\n    apply-to: startup-config\n", "d.yaml:3: apply-to: 'startup-config' is not startup or running"),
    ("devices:\n  - serial: A\n    reload: maybe\n", "reload: 'maybe' is not true or false"),
    ("devices:\n  - serial: A\n    template: x\n    template-file: y\n", "template and template-file: give one of"),
    ("devices:\n  - serial: A\n    template-file: ../etc/passwd\n", "template-file: '../etc/passwd' is not a plain file name"),
    ("devices:\n  - serial: A\n    variables: {hostname: x}\n", "d.yaml:3: variable hostname: hostname is built in"),
    ("devices:\n  - serial: A\n    variables: {bad-name: x}\n", "variable 'bad-name': is not a variable name"),
    ("devices:\n  - serial: A\n    variables: {x: {y: 1}}\n", "variable x: is a mapping"),
    ("devices:\n  - serial: A\n    hostname: [a]\n", "d.yaml:3: hostname: must be text, not a list"),
    ("devices:\n  - serial: A\n    hostname: " + "h" * 64 + "\n", "longer than 63 characters"),
    ("devices:\n  - serial: A\n    commands: [show version, '']\n", "commands 20: is empty"),
    ("devices:\n  - serial: A\n    reload: true\n    reload: false\n", "d.yaml:4: reload: is given twice (first on line 3)"),
    ("groups:\n  g: {serial: X}\ndevices: []\n", "d.yaml:2: group g: a group cannot set serial"),
    ("defaults: {}\nhosts: []\n", "d.yaml:2: hosts: is not one of defaults, groups, devices"),
    ("devices: [\n", "not valid YAML"),
    ("- serial: A\n", "expected a mapping with defaults, groups, devices"),
])
def test_every_yaml_mistake_names_the_file_the_line_and_the_field(text, expected):
    problems = fails(importer.devices_from_yaml, text, "d.yaml")
    assert any(expected in problem for problem in problems), problems


def test_all_problems_are_reported_at_once_in_the_order_of_the_file():
    text = "devices:\n  - serial: A\n    group: nope\n  - serial: B B\n  - serial: A\n"
    problems = fails(importer.devices_from_yaml, text, "d.yaml")
    assert [p.split(":")[1] for p in problems] == ["2", "4", "5"]


def test_aliases_that_expand_without_end_are_refused_not_followed():
    text = "a: &a [*a]\ndevices: *a\n"
    assert "nested too deeply" in fails(importer.devices_from_yaml, text, "d.yaml")[0]


# ----------------------------------------------------------------- CSV


def test_csv_columns_fields_groups_in_order_and_typed_variable_columns():
    groups = importer.load_groups(GROUPS, "groups.yaml")
    text = ("serial,pid,hostname,group,image-version,image-url,image-md5,var.mgmt_ip,var.uplinks:number,"
            "var.poe:boolean,var.extra:list\n"
            f"SN1,C9300-24P,a1,site-a,,,,192.0.2.11,2,TRUE,\"x, y\"\n"
            f"SN2,,b1,site-b;core,17.09.04a,http://images.example.invalid/i.bin,{MD5},198.51.100.11,4,false,\n"
            f"SN3,,b2,site-a | site-b,,,,198.51.100.12,,,\n")
    found = by_serial(importer.devices_from_csv(text, "d.csv", groups))
    one, two, three = found["SN1"], found["SN2"], found["SN3"]
    assert one.pid == "C9300-24P" and one.template_file == "access.j2" and one.username == "netops"
    assert dict(one.variables) == {"ntp_servers": "192.0.2.1,192.0.2.2", "vlan": "100", "gateway": "192.0.2.1",
                                   "mgmt_ip": "192.0.2.11", "uplinks": "2", "poe": "true", "extra": "x, y"}
    assert dict(one.variable_types) == {"ntp_servers": "list", "vlan": "number", "uplinks": "number",
                                        "poe": "boolean", "extra": "list"}
    assert two.pid == "C9500-24Y4C" and two.reload is False and two.image_md5 == MD5  # core after site-b
    assert dict(two.variables)["vlan"] == "200"
    assert dict(three.variables)["vlan"] == "200"  # site-b applied after site-a
    assert not one.has_image


def test_csv_in_a_semicolon_locale_with_a_multi_line_template_cell():
    text = 'serial;hostname;group;template\nSN1;a;;"hostname {{ hostname }}\nend\n"\nSN2;b;;\n'
    found = by_serial(importer.devices_from_csv(text, "d.csv"))
    assert found["SN1"].template == "hostname {{ hostname }}\nend\n" and found["SN2"].template is None
    assert found["SN2"].hostname == "b"


@pytest.mark.parametrize("text, expected", [
    ("hostname\na\n", "d.csv:1: serial: the header has no serial column"),
    ("serial,hostnme\nA,a\n", "d.csv:1: column 'hostnme': is not a field; a variable column is var.NAME"),
    ("serial,var.vlan:integer\nA,1\n", "column var.vlan:integer: type 'integer' is not one of string, number"),
    ("serial,var.vlan,var.vlan\nA,1,2\n", "column var.vlan: is given twice"),
    ("serial,var.hostname\nA,x\n", "variable hostname: hostname is built in"),
    ("serial,hostname\nA,a\nB B,b\n", "d.csv:3: serial: 'B B' is not a serial number"),
    ("serial,hostname\nA,a\n\nA,b\n", "d.csv:4: serial: A is listed twice (first at d.csv:2)"),
    ("serial,group\nA,site-c\n", "d.csv:2: group: 'site-c' is not defined (groups: core, site-a, site-b) (did you mean"),
    ("serial,var.vlan:number\nA,ten\n", "d.csv:2: var.vlan: variable vlan is declared a number but its value is 'ten'"),
    ("serial,var.poe:boolean\nA,maybe\n", "d.csv:2: var.poe: variable poe is declared a boolean"),
    ("serial,image-version,image-url\nA,1,u\n", "d.csv:2: image: needs md5 too"),
    ("serial,hostname\nA,a,extra\n", "d.csv:2: the row has 3 cells, the header 2"),
    ('serial,template\nA,"x\n', "not valid CSV"),
    ('serial,template\n"A\nB",x\nC,y\n', "d.csv:2: serial: 'A\\nB' is not a serial number"),
    ('serial,hostname\nA,"two\nlines"\nB B,x\n', "d.csv:4: serial: 'B B'"),  # lines of a multi-line cell count
])
def test_every_csv_mistake_names_the_file_the_line_and_the_field(text, expected):
    problems = fails(importer.devices_from_csv, text, "d.csv", importer.load_groups(GROUPS, "groups.yaml"))
    assert any(expected in problem for problem in problems), problems


def test_a_groups_file_with_a_mistake_names_that_file():
    problems = fails(importer.load_groups, "groups:\n  a:\n    imgae: {}\n", "groups.yaml")
    assert problems == ["groups.yaml:3: imgae: is not a field of group a (did you mean image?)"]


# ----------------------------------------------------------------- the checks serve and check make


def test_libyang_problems_are_told_at_the_device_that_has_them():
    bad = importer.Imported(Declaration(serial="SN2", apply_to="sometimes"), importer.Where("d.csv", 3))
    good = importer.Imported(Declaration(serial="SN1"), importer.Where("d.csv", 2))
    problems = fails(importer.verify, [good, bad], "d.csv", file_template_loader([]))
    assert len(problems) == 1 and problems[0].startswith("d.csv:3: ") and "sometimes" in problems[0]


def test_planning_problems_name_the_line_and_the_device(tmp_path):
    text = "serial,hostname\nSN1,a\nSN2,\n"
    imported = importer.devices_from_csv(text, "d.csv", importer.load_groups(GROUPS, "g.yaml"))
    templates(tmp_path)
    problems = fails(importer.verify, imported, "d.csv", file_template_loader([str(tmp_path / "templates")]))
    assert problems == [
        "d.csv:2: pnp-device SN1: template variable 'vlan' is undefined (declare it under variable)",
        "d.csv:3: pnp-device SN2: template variable 'hostname' is undefined (give the device a hostname)",
    ]
    missing = fails(importer.verify, imported, "d.csv", file_template_loader([str(tmp_path / "elsewhere")]))
    assert "template file 'access.j2' not found" in missing[0]


# ----------------------------------------------------------------- the command: files


def import_files(tmp_path, rows: str = "SN1,a1,site-a\nSN2,b1,site-b;core\n") -> tuple[str, str]:
    templates(tmp_path)
    return write(tmp_path / "groups.yaml", GROUPS), write(tmp_path / "devices.csv", "serial,hostname,group\n" + rows)


def test_import_writes_a_private_declarations_file_that_check_accepts(run, tmp_path):
    groups, devices = import_files(tmp_path)
    output = str(tmp_path / "declarations.xml")
    code, out, err = run("import", devices, "--groups", groups, "--output", output)
    assert code == 0, err
    assert "wrote" in out and "2 devices" in out
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600
    assert sorted(validation.load_file(output)) == ["SN1", "SN2"]
    assert run("check", "--datastore", output)[0] == 0
    assert [name for name in os.listdir(tmp_path) if name.endswith(".tmp")] == []
    text = open(output, encoding="utf-8").read()
    assert text.startswith("<?xml") and "<!-- Written by pnp-service import devices.csv: 2 devices." in text
    assert "- -" not in text
    assert '<services xmlns="http://clicon.org/controller">' in text and '<pnp-device xmlns="urn:pnp-service:pnp">' in text


def test_import_without_an_output_only_checks(run, tmp_path):
    groups, devices = import_files(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, out, _ = run("import", devices, "--groups", groups)
    assert code == 0 and "2 devices, valid and planned; nothing written" in out
    assert sorted(os.listdir(tmp_path)) == before


def test_nothing_is_written_when_one_row_is_bad(run, tmp_path):
    groups, devices = import_files(tmp_path, "SN1,a1,site-a\nSN2,b1,site-x\n")
    output = tmp_path / "declarations.xml"
    code, out, err = run("import", devices, "--groups", groups, "--output", str(output))
    assert code == 1 and not output.exists() and out == ""
    assert f"{devices}:3: group: 'site-x' is not defined" in err and "nothing written (1 problem)" in err
    assert "Traceback" not in err


def test_an_existing_file_is_never_overwritten_without_merge(run, tmp_path):
    groups, devices = import_files(tmp_path)
    output = tmp_path / "declarations.xml"
    output.write_text("mine", encoding="utf-8")
    code, _, err = run("import", devices, "--groups", groups, "--output", str(output))
    assert code == 2 and "exists already: --merge adds to it" in err
    assert output.read_text(encoding="utf-8") == "mine"


def test_merge_adds_new_serials_keeps_comments_and_declared_ones_and_replaces_only_when_asked(run, tmp_path):
    groups, devices = import_files(tmp_path, "FOC2001X0AB,renamed,site-a\nSN9,new,site-b\n")
    output = tmp_path / "declarations.xml"
    original = open(EXAMPLE_DATASTORE, encoding="utf-8").read()
    output.write_text(original, encoding="utf-8")
    code, out, err = run("import", devices, "--groups", groups, "--output", str(output), "--merge")
    assert code == 0, err
    assert "1 added, 0 replaced, 1 already declared and kept as they are (--replace replaces them: FOC2001X0AB)" in out
    merged = output.read_text(encoding="utf-8")
    assert merged.startswith(original[:original.index("</services>")])  # the file as it was, comments and all
    found = validation.load_file(str(output))
    assert list(found) == ["FOC2001X0AB", "FOC2001X0CD", "SN9"] and found["FOC2001X0AB"].hostname == "access-sw-01"
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600

    code, out, _ = run("import", devices, "--groups", groups, "--output", str(output), "--merge", "--replace")
    assert code == 0 and "0 added, 2 replaced" in out
    found = validation.load_file(str(output))
    assert list(found) == ["FOC2001X0AB", "FOC2001X0CD", "SN9"]  # replaced in place
    assert found["FOC2001X0AB"].hostname == "renamed" and found["FOC2001X0AB"].template_file == "access.j2"
    assert "SN of the UDI (on the box)" not in output.read_text(encoding="utf-8")  # went with the old one
    assert "pnp-service reads it and never writes it" in output.read_text(encoding="utf-8")


def test_merge_refuses_a_broken_file_and_a_missing_one(run, tmp_path):
    groups, devices = import_files(tmp_path)
    broken = tmp_path / "broken.xml"
    broken.write_text(open(EXAMPLE_DATASTORE, encoding="utf-8").read().replace("<hostname>", "<hostnme>")
                      .replace("</hostname>", "</hostnme>"), encoding="utf-8")
    before = broken.read_bytes()
    code, _, err = run("import", devices, "--groups", groups, "--output", str(broken), "--merge")
    assert code == 1 and f"{broken}:" in err and "hostnme" in err and "fix it first" in err
    assert broken.read_bytes() == before
    code, _, err = run("import", devices, "--groups", groups, "--output", str(tmp_path / "none.xml"), "--merge")
    assert code == 2 and "does not exist (leave out --merge to create it)" in err


@pytest.mark.parametrize("flags, message", [
    (["--merge"], "--merge goes with --output"),
    (["--output", "x.xml", "--replace"], "--replace goes with --merge"),
    (["--output", "x.xml", "--clixon-cli"], "not allowed with argument"),
    (["--format", "toml"], "invalid choice"),
])
def test_flags_that_do_not_go_together_are_refused(run, tmp_path, flags, message):
    groups, devices = import_files(tmp_path)
    code, _, err = run("import", devices, "--groups", groups, *flags)
    assert code == 2 and message in err


def test_a_list_that_is_not_utf8_or_has_a_byte_order_mark(run, tmp_path):
    templates(tmp_path)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfserial,hostname,template-file,var.vlan:number,var.ntp_servers:list\n"
                    b"SN1,a,access.j2,1,x\n")
    assert run("import", str(bom))[0] == 0
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"serial,hostname\nSN1,caf\xe9\n")
    code, _, err = run("import", str(latin))
    assert code == 1 and "not UTF-8 text" in err and "save it as UTF-8" in err


# ----------------------------------------------------------------- the command: for a controller


def cligen_reads(line: str) -> list[str]:
    """The words CLIgen makes of a line typed or piped into clixon_cli, as a string variable gets them.

    A model of its four passes, written from CLIgen's source (gl_getline in cligen_getline.c, cli_trim in
    cligen_read.c, next_token in cligen_cvec.c, string_remove_backslash in cligen_cv.c).
    """
    typed, escape = [], False
    for ch in line:  # 1. the line editor: \\ takes the next character as is; ? asks for help
        if escape:
            typed.append(ch)
            escape = False
        elif ch == "\\":
            escape = True
        else:
            assert ch != "?", f"an unescaped ? in {line!r} asks for help"
            typed.append(ch)
    trimmed, blank = [], False
    for index, ch in enumerate(typed):  # 2. a word starting with # is a comment; runs of blanks are one space
        if ch == "#" and (blank or index == 0):
            break
        if ch in " \t":
            if not blank:
                trimmed.append(" ")
            blank = True
        else:
            trimmed.append(ch)
            blank = False
    text = "".join(trimmed).strip(" ")
    words, position = [], 0
    while position < len(text):  # 3. words: "..." to the next quote, else to a blank or | with \\ protecting
        if text[position] == " ":
            position += 1
            continue
        if text[position] == '"' and text.find('"', position + 1) > 0:
            end = text.index('"', position + 1)
            words.append(text[position + 1:end])
            position = end + 1
            continue
        if text[position] == "|":
            words.append("|")
            position += 1
            continue
        end, escape = position, False
        while end < len(text) and (escape or text[end] not in " |"):
            escape = not escape and text[end] == "\\"
            end += 1
        words.append(text[position:end])
        position = end
    out = []
    for word in words:  # 4. a string value loses one level of backslashes
        kept, escape = [], False
        for ch in word:
            if escape or ch != "\\":
                kept.append(ch)
                escape = False
            else:
                escape = True
        out.append("".join(kept))
    return out


@pytest.mark.parametrize("value", ["plain", "a b", "a  b", " lead", "trail ", "x #y", "#a", "a|b", 'say "hi"',
                                   "back\\slash", "what?", "{{ hostname }}", " ip address {{ ip }} 255.255.255.0",
                                   "{{ servers | join(' ') }}", "{# note #}", '"', "\\", "a\\ b", '#say "hi"',
                                   'a "b" #c', 'a "b" | c'])
def test_values_reach_the_controller_cli_as_written(value):
    assert cligen_reads(f"set x {importer.cli_value(value)}") == ["set", "x", value]


# Every printable ASCII character, and the runs CLIgen treats specially, so that they come up often.
PIECES = [chr(code) for code in range(32, 127)] + ["  ", " #", ' "', '" ', "\\\\", " ?", "| ", "\\ "]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=20).map("".join))
def test_any_printable_value_reaches_the_controller_cli_as_written(value):
    try:
        written = importer.cli_value(value)
    except importer.Untypable:
        assert '"' in value and value.endswith(" ")  # the one printable case refused
        return
    assert cligen_reads(f"set x {written}") == ["set", "x", value]


def test_the_model_of_cligen_is_not_a_no_op():
    """Unescaped, these values do not survive: the model above sees what the escaping is for."""
    assert cligen_reads('set x "a  b"') == ["set", "x", "a b"]
    assert cligen_reads('set x "x #y"') == ["set", "x", '"x']  # the comment took the closing quote too
    assert cligen_reads("set x a\\\\b") == ["set", "x", "ab"]
    assert cligen_reads('set x "say \\"hi\\""')[2] != 'say "hi"'


def test_clixon_cli_script_sets_every_leaf_and_commits(run, tmp_path):
    groups, devices = import_files(tmp_path)
    write(tmp_path / "devices.yaml", f"""\
devices:
  - serial: SN1
    hostname: a1
    template: |
      hostname {{{{ hostname }}}}
      banner motd "Managed  by #netops"

       ip address {{{{ ip }}}}
    variables: {{ip: 192.0.2.1, servers: [a, b]}}
    commands: [show version]
    image: {{version: 17.09.04a, url: http://images.example.invalid/i.bin, md5: {MD5}, reload-wait: 90}}
    username: admin
    password: "p@ss word"
""")
    code, out, err = run("import", str(tmp_path / "devices.yaml"), "--clixon-cli")
    assert code == 0, err
    assert "review it, then paste it into clixon_cli" in err
    lines = out.splitlines()
    assert lines[0].startswith("# pnp-service import devices.yaml: 1 device") and lines[1] == "configure"
    assert lines[-1] == "commit"
    typed = {}
    for line in lines[2:-1]:
        words = cligen_reads(line)
        assert words[:4] == ["set", "services", "pnp-device", "SN1"], line
        typed[" ".join(words[4:-1])] = words[-1]
    assert typed["config line 10 text"] == "hostname {{ hostname }}"
    assert typed["config line 20 text"] == 'banner motd "Managed  by #netops"'
    assert "config line" in typed and typed["config line"] == "30"  # an empty line: the key alone
    assert typed["config line 40 text"] == " ip address {{ ip }}"
    assert typed["variable servers type"] == "list" and typed["variable servers value"] == "a,b"
    assert typed["command 10 cli"] == "show version" and typed["image reload-wait"] == "90"
    assert typed["credentials password"] == "p@ss word" and typed["image md5"] == MD5


def test_clixon_cli_replace_deletes_first_and_untypable_values_are_refused(run, tmp_path, monkeypatch):
    monkeypatch.setenv("PNP_TEMPLATE_DIRS", str(tmp_path / "templates"))  # the controller's template folder
    groups, devices = import_files(tmp_path)
    code, out, _ = run("import", devices, "--groups", groups, "--clixon-cli", "--replace")
    assert code == 0
    lines = out.splitlines()
    assert lines[lines.index("delete services pnp-device SN1") + 1] == "set services pnp-device SN1"
    write(tmp_path / "tab.yaml", 'devices:\n  - serial: SN1\n    hostname: a\n    template: "hostname\\t{{ hostname }}"\n')
    code, out, err = run("import", str(tmp_path / "tab.yaml"), "--clixon-cli")
    assert code == 1 and out == ""
    assert "tab.yaml:2: SN1 template line 10: has characters the controller's CLI cannot type ('\\t')" in err
    assert "--output or --netconf instead" in err


def test_a_clixon_cli_script_commits_in_batches_the_controller_finishes_in_time(run, tmp_path, monkeypatch):
    monkeypatch.setenv("PNP_TEMPLATE_DIRS", str(tmp_path / "templates"))
    rows = "".join(f"SN{n},h{n},site-a\n" for n in range(1, 6))
    groups, devices = import_files(tmp_path, rows)
    code, out, err = run("import", devices, "--groups", groups, "--clixon-cli", "--commit-every", "2")
    assert code == 0, err
    serials_between: list[list[str]] = [[]]
    for line in out.splitlines():
        if line == "commit":
            serials_between.append([])
        elif line.startswith("set services pnp-device ") and len(line.split()) == 4:
            serials_between[-1].append(line.split()[3])
    assert serials_between == [["SN1", "SN2"], ["SN3", "SN4"], ["SN5"], []]  # the last commit ends the script
    code, out, _ = run("import", devices, "--groups", groups, "--clixon-cli")
    assert out.count("\ncommit\n") == 1  # 5 devices: one commit at the default of 1,000
    code, _, err = run("import", devices, "--groups", groups, "--clixon-cli", "--commit-every", "0")
    assert code == 2 and "--commit-every" in err


def test_netconf_body_is_an_edit_config_of_valid_declarations(run, tmp_path, monkeypatch):
    monkeypatch.setenv("PNP_TEMPLATE_DIRS", str(tmp_path / "templates"))
    groups, devices = import_files(tmp_path)
    for flags, operation in (([], "create"), (["--replace"], "replace")):
        code, out, _ = run("import", devices, "--groups", groups, "--netconf", *flags)
        assert code == 0
        config = etree.fromstring(out.encode())
        assert config.tag == f"{{{NETCONF_NS}}}config"
        [services] = config
        assert services.tag == f"{{{CONTROLLER_NS}}}services"
        assert [d.get(f"{{{NETCONF_NS}}}operation") for d in services] == [operation, operation]
        for device in services:
            del device.attrib[f"{{{NETCONF_NS}}}operation"]
        document = b"<config>" + etree.tostring(services) + b"</config>"
        assert sorted(validation.load(document, "netconf")) == ["SN1", "SN2"]


# ----------------------------------------------------------------- claim


def stranger(serve, clock, path: str, serial: str = "STRANGER1", pid: str = "C9200L-24T-4G") -> None:
    running = serve(path)
    result = AgentSimulator(running.url, sleep=clock.advance, max_polls=10).run(SimulatedDevice(serial, pid=pid))
    assert result.outcome == "backed-off"
    running.stop()
    running.store.close()


def test_claim_prints_a_declaration_from_what_the_device_reported_and_writes_nothing(run, serve, clock, example_path):
    stranger(serve, clock, example_path)
    templates(pathlib.Path(example_path).parent)
    before, state = open(example_path, "rb").read(), state_dump(example_path)
    code, out, err = run("claim", "STRANGER1", "--datastore", example_path, "--template-file", "access.j2",
                         "--hostname", "edge-1", "--var", "vlan:number=10", "--var", "ntp_servers:list=192.0.2.1,192.0.2.2")
    assert code == 0, err
    element = etree.fromstring(out.encode())
    assert element.tag == f"{{{PNP_NS}}}pnp-device"
    assert [(etree.QName(c).localname, c.text) for c in element][:2] == [("serial", "STRANGER1"),
                                                                        ("pid", "C9200L-24T-4G")]
    declaration = model.declaration_from_xml(element)
    assert declaration.template_file == "access.j2" and dict(declaration.variables)["vlan"] == "10"
    assert open(example_path, "rb").read() == before and state_dump(example_path) == state


def test_a_claim_that_would_send_no_configuration_is_refused_with_what_to_give(run, serve, clock, example_path):
    stranger(serve, clock, example_path)
    code, out, err = run("claim", "STRANGER1", "--datastore", example_path)
    assert code == 1 and out == "" and "declares no configuration" in err and "template" in err
    templates(pathlib.Path(example_path).parent)
    code, out, err = run("claim", "STRANGER1", "--datastore", example_path, "--template-file", "access.j2",
                         "--hostname", "edge-1")
    assert code == 1 and "vlan" in err and "undefined" in err  # the template's variable, named
    code, _, err = run("claim", "STRANGER1", "--datastore", example_path, "--var", "novalue")
    assert code == 2 or (code == 1 and "NAME=VALUE" in err)


def test_claim_with_groups_merged_into_the_file_is_served_at_the_next_poll(run, serve, clock, tmp_path):
    path = str(tmp_path / "declarations.xml")
    with open(EXAMPLE_DATASTORE, encoding="utf-8") as source:
        write(tmp_path / "declarations.xml", source.read())
    templates(tmp_path)
    groups = write(tmp_path / "groups.yaml", GROUPS)
    stranger(serve, clock, path)
    code, out, err = run("claim", "STRANGER1", "--datastore", path, "--groups", groups, "--group", "site-b",
                         "--hostname", "edge-1", "--output", path, "--merge")
    assert code == 0, err
    assert "1 added" in out
    declared = validation.load_file(path)["STRANGER1"]
    assert (declared.pid, declared.hostname, dict(declared.variables)["vlan"]) == ("C9200L-24T-4G", "edge-1", "200")
    running = serve(path)
    device = SimulatedDevice("STRANGER1", pid="C9200L-24T-4G")
    assert AgentSimulator(running.url, sleep=clock.advance).run(device).outcome == "configured"
    assert device.config.startswith("hostname edge-1\nvlan 200\nntp server 192.0.2.1\n")


def test_claim_as_clixon_cli_lines(run, serve, clock, example_path, monkeypatch):
    stranger(serve, clock, example_path)
    templates(pathlib.Path(example_path).parent)
    monkeypatch.setenv("PNP_TEMPLATE_DIRS", str(pathlib.Path(example_path).parent / "templates"))
    code, out, err = run("claim", "STRANGER1", "--datastore", example_path, "--hostname", "edge-1", "--clixon-cli",
                         "--template-file", "access.j2", "--var", "vlan=20", "--var", "ntp_servers:list=192.0.2.1")
    assert code == 0, err
    lines = out.splitlines()[1:]
    assert lines[:4] == ["configure", "set services pnp-device STRANGER1",
                         "set services pnp-device STRANGER1 pid C9200L-24T-4G",
                         "set services pnp-device STRANGER1 hostname edge-1"]
    assert "set services pnp-device STRANGER1 config template-file access.j2" in lines
    assert "set services pnp-device STRANGER1 variable vlan value 20" in lines and lines[-1] == "commit"


def test_claim_refuses_serials_that_are_not_unclaimed(run, serve, clock, example_path):
    stranger(serve, clock, example_path)
    code, out, err = run("claim", "STRANGER1", "FOC2001X0AB", "NOBODY1", "--datastore", example_path)
    assert code == 1 and out == ""
    assert "FOC2001X0AB is declared already" in err
    assert "NOBODY1 is not unclaimed: it has not called in" in err and "pnp-service status" in err
    assert run("claim", "STRANGER1", "X2", "--datastore", example_path, "--hostname", "h")[0] == 2
    code, _, err = run("claim", "STRANGER1", "--datastore", example_path, "--group", "site-a")
    assert code == 2 and "--group needs --groups" in err


def test_claim_with_an_unknown_group_says_which(run, serve, clock, example_path, tmp_path):
    stranger(serve, clock, example_path)
    groups = write(tmp_path / "groups.yaml", GROUPS)
    code, _, err = run("claim", "STRANGER1", "--datastore", example_path, "--groups", groups, "--group", "site-z")
    assert code == 1 and "group: 'site-z' is not defined" in err


def test_claimed_takes_no_pid_when_the_device_reported_none():
    [item] = importer.claimed([Unclaimed("SN1")])
    assert item.declaration == Declaration(serial="SN1")


# ----------------------------------------------------------------- 200 devices, the whole way


def test_two_hundred_rows_in_two_groups_import_validate_and_provision(run, serve, clock, tmp_path):
    templates(tmp_path)
    groups = write(tmp_path / "groups.yaml", GROUPS)
    rows = ["serial,pid,hostname,group,var.mgmt_ip,var.uplinks:number"]
    for index in range(200):
        site = "site-a" if index % 2 == 0 else "site-b"
        rows.append(f"FOC{index:05d}X,C9300-24P,sw-{index:03d},{site},192.0.2.{index % 250 + 1},{index % 4}")
    devices = write(tmp_path / "devices.csv", "\n".join(rows) + "\n")
    output = str(tmp_path / "declarations.xml")
    code, out, err = run("import", devices, "--groups", groups, "--output", output)
    assert code == 0, err
    assert "200 devices" in out
    code, out, _ = run("check", "--datastore", output)
    assert code == 0 and "200 devices declared, 200 planned, 0 with errors" in out

    running = serve(output)
    fleet = [SimulatedDevice(f"FOC{index:05d}X", pid="C9300-24P") for index in range(200)]
    simulator = AgentSimulator(running.url, sleep=clock.advance, time_scale=0, max_polls=20)
    results = simulator.run_many(fleet, concurrency=16)
    assert [r.outcome for r in results] == ["configured"] * 200, [r for r in results if r.outcome != "configured"][:3]
    for index, device in enumerate(fleet):
        vlan = 100 if index % 2 == 0 else 200
        assert device.config == f"hostname sw-{index:03d}\nvlan {vlan}\nntp server 192.0.2.1\nntp server 192.0.2.2\n"
    snapshot = running.store.snapshot()
    assert {record.status.state for record in snapshot.devices} == {"provisioned"} and len(snapshot.devices) == 200


def test_import_errors_are_one_line_each_without_a_traceback_from_the_installed_command(tmp_path):
    devices = write(tmp_path / "devices.csv", "serial,hostname\nA A,x\n")
    result = subprocess.run([sys.executable, "-m", "pnp_service.cli", "import", devices, "--output",
                             str(tmp_path / "o.xml")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"pnp-service import: {devices}:2: serial: 'A A' is not a serial number (a letter or digit, then up to 63 "
        "letters, digits, . _ -)",
        "pnp-service import: nothing written (1 problem)",
    ]
    assert not (tmp_path / "o.xml").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_merge_by_root_keeps_the_owner_the_service_reads_the_file_as(run, tmp_path):
    groups, devices = import_files(tmp_path, "SN9,new,site-b\n")
    output = tmp_path / "declarations.xml"
    output.write_text(open(EXAMPLE_DATASTORE, encoding="utf-8").read(), encoding="utf-8")
    os.chown(output, 65534, 65534)
    assert run("import", devices, "--groups", groups, "--output", str(output), "--merge")[0] == 0
    written = os.stat(output)
    assert (written.st_uid, written.st_gid, stat.S_IMODE(written.st_mode)) == (65534, 65534, 0o600)
    assert "SN9" in validation.load_file(str(output))


def test_a_template_that_installs_the_controllers_key_is_checked_with_that_key(run, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    write(tmp_path / "id_ed25519.pub", public + " controller@lab\n")
    devices = write(tmp_path / "devices.yaml", """\
devices:
  - serial: SN1
    hostname: a1
    template: |
      hostname {{ hostname }}
      ip ssh pubkey-chain
       username netconf
        key-string
      {% for line in controller_ssh_key_lines %}   {{ line }}
      {% endfor %}    exit
""")
    code, _, err = run("import", devices, "--clixon-cli")
    assert code == 1 and "controller_ssh_key_lines" in err
    code, out, err = run("import", devices, "--clixon-cli", "--controller-ssh-key", str(tmp_path / "id_ed25519.pub"))
    assert code == 0, err
    assert "set services pnp-device SN1 config line" in out


def test_a_template_beside_the_list_does_not_pass_for_a_controller_that_reads_its_own_folder(run, tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv("PNP_TEMPLATE_DIRS", str(tmp_path / "controller-templates"))
    groups, devices = import_files(tmp_path)  # templates/access.j2 beside the list
    code, out, err = run("import", devices, "--groups", groups, "--clixon-cli")
    assert code == 1 and out == "" and "access.j2" in err and "controller-templates" in err


# ----------------------------------------------------------------- switches declared by location (docs/location.md)

LOCATED_CSV = """serial,location,hostname,template
FOC2001X0AB,,access-sw-01,hostname {{ hostname }}
,dist-sw-1:Gi1/0/48,access-sw-7,hostname {{ hostname }}
,dist-sw-1 Gi1/0/47,access-sw-6,hostname {{ hostname }}
"""


def test_a_location_column_declares_switches_by_where_they_are_plugged_in():
    imported = importer.devices_from_csv(LOCATED_CSV, "d.csv")
    assert [item.key for item in imported] == ["FOC2001X0AB", "dist-sw-1 Gi1/0/48", "dist-sw-1 Gi1/0/47"]
    declared = validation.read(importer.declarations_document([item.declaration for item in imported]), "out.xml")
    assert sorted(declared.declarations) == ["FOC2001X0AB"]
    assert sorted((l.neighbor, l.port, l.declaration.hostname) for l in declared.locations.values()) == [
        ("dist-sw-1", "Gi1/0/47", "access-sw-6"), ("dist-sw-1", "Gi1/0/48", "access-sw-7")]
    script = importer.clixon_cli_script(imported, replace=True)
    assert "delete services pnp-location dist-sw-1 Gi1/0/48" in script
    assert "set services pnp-location dist-sw-1 Gi1/0/48 hostname access-sw-7" in script


def test_a_location_row_is_merged_and_replaced_by_its_location(tmp_path):
    imported = importer.devices_from_csv(LOCATED_CSV, "d.csv")
    existing = importer.declarations_document([item.declaration for item in imported])
    renamed = importer.devices_from_csv(LOCATED_CSV.replace("access-sw-7", "access-sw-77"), "d.csv")
    kept = importer.merge_into(existing, "ds.xml", renamed)
    assert "dist-sw-1 Gi1/0/48" in kept.kept and not kept.added
    replaced = importer.merge_into(existing, "ds.xml", renamed, replace=True)
    assert "dist-sw-1 Gi1/0/48" in replaced.replaced and b"access-sw-77" in replaced.data


@pytest.mark.parametrize("row, expected", [
    ("FOC1,dist-sw-1:Gi1/0/1,x", "d.csv:2: location: declare a switch by serial or by location, not both"),
    (",nonsense,x", "d.csv:2: location: 'nonsense' is not NEIGHBOR:PORT"),
])
def test_a_location_cell_that_cannot_be_one_is_named(row, expected):
    problems = fails(importer.devices_from_csv, f"serial,location,hostname\n{row}\n", "d.csv")
    assert any(problem.startswith(expected) for problem in problems), problems


def test_one_port_in_two_spellings_is_listed_twice():
    text = "location,hostname\ndist-sw-1:Gi1/0/2,y\nDIST-SW-1:GigabitEthernet1/0/2,z\n"
    problems = fails(importer.devices_from_csv, text, "d.csv")
    assert problems == ["d.csv:3: location: location DIST-SW-1 GigabitEthernet1/0/2 is listed twice (first at d.csv:2)"]
