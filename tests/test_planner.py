"""The planner: declarations to ordered steps, revisions, template rendering and its errors."""

from __future__ import annotations

import pytest

from pnp_service.model import Declaration
from pnp_service.planner import PlanningError, file_template_loader, plan, render_config


def declaration(**fields) -> Declaration:
    base = dict(serial="SN1", pid="C9300-24P", hostname="sw1", template="hostname {{ hostname }}\n")
    base.update(fields)
    return Declaration(**base)


def test_minimal_plan_is_device_info_then_config():
    work = plan(declaration())
    assert [(s.id, s.type) for s in work.steps] == [("device-info", "device-info"), ("config-upgrade", "config-upgrade")]
    assert work.steps[0].params == {"expect-pid": "C9300-24P"}
    assert work.steps[1].params == {"apply-to": "startup", "reload": "true", "config": "hostname sw1\n"}


def test_full_plan_orders_image_commands_config():
    work = plan(
        declaration(
            image_version="17.9.4a", image_url="http://h/i.bin", image_md5="a" * 32,
            commands=((20, "show inventory"), (10, "show version")),
        )
    )
    assert [s.id for s in work.steps] == ["device-info", "image-install", "cli-exec-10", "cli-exec-20", "config-upgrade"]
    assert work.steps[1].params["checksum"] == "a" * 32


def test_revision_is_stable_and_follows_the_declaration():
    assert plan(declaration()).revision == plan(declaration()).revision
    assert plan(declaration()).revision != plan(declaration(hostname="sw2")).revision
    assert plan(declaration()).revision != plan(declaration(pid="C9300-48P")).revision


def test_variables_and_builtins_are_available():
    text = render_config(
        declaration(template="{{ hostname }} {{ serial }} {{ pid }} {{ vlan }}", variables=(("vlan", "10"),))
    )
    assert text == "sw1 SN1 C9300-24P 10"


def test_builtin_variables_win_over_declared_ones():
    assert render_config(declaration(template="{{ hostname }}", variables=(("hostname", "x"),))) == "sw1"


def test_missing_variable_names_device_and_variable():
    with pytest.raises(PlanningError) as raised:
        plan(declaration(template="ip address {{ mgmt_ip }}"))
    message = str(raised.value)
    assert "SN1" in message and "mgmt_ip" in message


def test_syntax_error_names_device_and_line():
    with pytest.raises(PlanningError, match=r"SN1: template syntax error on line 2"):
        plan(declaration(template="ok\n{% if %}\n"))


def test_template_lines_are_joined_in_number_order():
    work = plan(declaration(template=None, template_lines=((20, "end"), (10, "hostname {{ hostname }}"))))
    assert work.steps[-1].params["config"] == "hostname sw1\nend\n"


def test_template_file_is_loaded_by_name(tmp_path):
    (tmp_path / "access.j2").write_text("hostname {{ hostname }}\n")
    work = plan(declaration(template=None, template_file="access.j2"), file_template_loader([str(tmp_path)]))
    assert work.steps[-1].params["config"] == "hostname sw1\n"


@pytest.mark.parametrize("name", ["missing.j2", "../etc/passwd"])
def test_bad_template_file_is_a_planning_error(tmp_path, name):
    with pytest.raises(PlanningError, match="SN1"):
        plan(declaration(template=None, template_file=name), file_template_loader([str(tmp_path)]))


def test_config_url_is_served_as_is():
    work = plan(declaration(template=None, config_url="http://cfg/sw1.cfg"))
    assert work.steps[-1].params["url"] == "http://cfg/sw1.cfg" and "config" not in work.steps[-1].params


def test_sandbox_blocks_unsafe_attribute_access():
    with pytest.raises(PlanningError, match="SN1"):
        plan(declaration(template="{{ ''.__class__.__mro__[1].__subclasses__() }}"))


def test_image_without_md5_is_refused():
    with pytest.raises(PlanningError, match="md5"):
        plan(declaration(image_version="1", image_url="http://h/i.bin"))


def test_typed_variables_reach_the_template_as_numbers_booleans_and_lists():
    declaration = Declaration(
        serial="SN1", hostname="h",
        template="{% for s in ntp %}ntp server {{ s }}\n{% endfor %}vlan {{ vlan + 1 }}\n{% if lldp %}lldp run\n{% endif %}"
                 "{% for p in ports %}interface {{ p }}\n{% endfor %}",
        variables=(("ntp", "192.0.2.1, 192.0.2.2"), ("vlan", "99"), ("lldp", "true"), ("ports", '["Gi1/0/1", "Gi1/0/2"]')),
        variable_types=(("ntp", "list"), ("vlan", "number"), ("lldp", "boolean"), ("ports", "list")),
    )
    assert render_config(declaration) == ("ntp server 192.0.2.1\nntp server 192.0.2.2\nvlan 100\nlldp run\n"
                                          "interface Gi1/0/1\ninterface Gi1/0/2\n")


@pytest.mark.parametrize("kind, value, message", [
    ("number", "ten", "declared a number"), ("boolean", "yes", "declared a boolean"), ("list", "[1,", "declared a list but is not a JSON array"),
])
def test_a_value_that_is_not_its_type_is_a_planning_error_naming_it(kind, value, message):
    declaration = Declaration(serial="SN1", hostname="h", template="{{ x }}", variables=(("x", value),),
                              variable_types=(("x", kind),))
    with pytest.raises(PlanningError, match=f"SN1: variable x is {message}"):
        plan(declaration)
