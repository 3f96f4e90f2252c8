"""The per-device state machine on its own: records in, replies and status changes out."""

from __future__ import annotations

import dataclasses
import datetime as dt


from pnp_service import protocol
from pnp_service.simulator import messages
from pnp_service.model import Declaration, DeviceRecord, Status
from pnp_service.planner import plan
from pnp_service.provisioner import Contact, Provisioner, Settings
from pnp_service.steps import StepRegistry, advance

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)
UDI = protocol.Udi("C9300-24P", "V01", "SN1")


def declared(**fields) -> Declaration:
    base = dict(serial="SN1", pid="C9300-24P", hostname="sw1", template="hostname {{ hostname }}\n")
    base.update(fields)
    return Declaration(**base)


class Device:
    """Drives one serial through the provisioner, keeping the record as a store would."""

    def __init__(self, declaration: Declaration | None, settings: Settings | None = None, udi=UDI, registry=None):
        self.provisioner = Provisioner(settings or Settings(), registry)
        work = plan(declaration) if declaration else None
        self.record = DeviceRecord(udi.serial, declaration, work, None)
        self.udi = udi
        self.now = T0
        self.count = 0
        self.writes = 0

    def contact(self) -> Contact:
        return Contact(self.now, "192.0.2.50", lambda kind, serial, rev, name, bind: f"http://pnp/dl/{kind}/{serial}/{rev}/{name}".rstrip("/"))

    def _apply(self, decision):
        if decision.status is not None:
            self.record = dataclasses.replace(self.record, status=decision.status)
            self.writes += 1
        if decision.unclaimed is not None:
            self.record = dataclasses.replace(self.record, unclaimed=decision.unclaimed)
            self.writes += 1
        return decision

    def poll(self, auth_required=False, reloaded=False):
        self.count += 1
        self.correlator = f"corr-{self.count}"
        request = protocol.WorkRequest(self.udi, self.correlator, "Switch", auth_required, reloaded=reloaded)
        decision = self._apply(self.provisioner.on_work_request(self.record, request, self.contact()))
        return decision, messages.parse_server_message(decision.reply)

    def respond(self, data: bytes):
        response = protocol.parse_work_response(data)
        decision = self._apply(self.provisioner.on_work_response(self.record, response, self.contact()))
        assert messages.parse_server_message(decision.reply).service == "bye"
        return decision

    def answer_device_info(self, version="17.3.1", pid="C9300-24P", **kwargs):
        udi = protocol.Udi(pid, "V01", self.udi.serial)
        kwargs.setdefault("flash_free", 10**9)
        return self.respond(messages.device_info(udi, self.correlator, platform=pid, version=version, hostname="s", **kwargs))

    def ok(self, service):
        return self.respond(messages.response(self.udi, service, self.correlator))

    def install_from(self, version: str):
        """device-info of ``version``, then the image-install it is sent, answered with success."""
        self.poll()
        self.answer_device_info(version=version)
        self.poll()
        return self.ok("image-install")

    def fail(self, service, code="PnP Service Error 1410", message="copy failed"):
        error = protocol.ErrorInfo("ERROR", code, message)
        return self.respond(messages.response(self.udi, service, self.correlator, False, error))

    @property
    def status(self) -> Status:
        return self.record.status

    def wait(self, seconds):
        self.now += dt.timedelta(seconds=seconds)


def test_declared_device_is_provisioned():
    device = Device(declared())
    decision, message = device.poll()
    assert message.service == "device-info" and message.correlator == "corr-1"
    assert device.status.state == "onboarding" and device.status.correlator == "corr-1"
    device.answer_device_info()
    assert device.status.step == "config-upgrade" and device.status.facts.version == "17.3.1"
    _, message = device.poll()
    assert message.service == "config-upgrade"
    assert message.find_text("config/copy/source/location") == f"http://pnp/dl/config/SN1/{device.record.work.revision}"
    assert message.find("config/copy/abortOnSyntaxFault") is not None
    assert message.find("reload") is not None
    device.ok("config-upgrade")
    assert device.status.state == "provisioned" and device.status.started == T0
    _, message = device.poll()
    assert message.service == "backoff" and message.find_text("backoff/defaultMinutes") == "60"


def test_unknown_serial_is_unclaimed_and_backed_off():
    device = Device(None)
    decision, message = device.poll()
    assert message.service == "backoff" and message.find("backoff/callbackAfter") is not None
    assert decision.status is None
    entry = device.record.unclaimed
    assert (entry.serial, entry.pid, entry.address, entry.first_seen) == ("SN1", "C9300-24P", "192.0.2.50", T0)


def test_unclaimed_last_seen_is_refreshed_but_not_on_every_poll():
    device = Device(None)
    device.poll()
    device.wait(10)
    assert device.poll()[0].unclaimed is None
    device.wait(400)
    decision, _ = device.poll()
    assert decision.unclaimed.last_seen == device.now and decision.unclaimed.first_seen == T0


def test_a_caller_with_another_pid_is_a_refused_claim_and_the_genuine_switch_proceeds():
    device = Device(declared(pid="C9300-48P"))  # the caller's UDI says C9300-24P
    decision, message = device.poll()
    assert message.service == "backoff" and decision.event == "refused-claim"
    assert device.status.state == "planned" and device.status.error.code == "pid-mismatch"
    assert "C9300-48P" in device.status.error.message and "C9300-24P" in device.status.error.message
    assert "192.0.2.50" in device.status.error.message and device.status.last_contact is None
    writes = device.writes
    for _ in range(3):  # backed off each time, recorded once (not a write per stranger's poll)
        _, message = device.poll()
        assert message.service == "backoff"
    assert device.writes == writes
    device.udi = protocol.Udi("C9300-48P", "V01", "SN1")  # the switch that was declared
    _, message = device.poll()
    assert message.service == "device-info"
    device.answer_device_info(pid="C9300-48P")
    _, message = device.poll()
    device.ok("config-upgrade")
    assert device.status.state == "provisioned" and device.status.error.code == ""


def test_a_device_info_with_another_pid_is_refused_without_putting_the_declaration_in_error():
    device = Device(declared(pid="C9300-24P"), Settings(max_attempts=2))
    for _ in range(3):  # a liar that polls with the declared PID and answers with another, again and again
        device.poll()
        decision = device.answer_device_info(pid="C9300-48P")
        assert decision.event == "refused-claim"
    assert device.status.state == "onboarding" and device.status.attempts == 0
    assert device.status.error.code == "pid-mismatch" and device.status.facts.platform == ""
    device.poll()  # the genuine switch
    device.answer_device_info(pid="C9300-24P")
    assert device.status.step == "config-upgrade" and device.status.error.code == ""


def test_failing_step_retries_with_growing_backoff_then_errors():
    device = Device(declared(), Settings(max_attempts=3, retry_base_seconds=30))
    device.poll()
    device.answer_device_info()
    delays = []
    for attempt in (1, 2):
        _, message = device.poll()
        assert message.service == "config-upgrade"
        device.fail("config-upgrade")
        assert device.status.attempts == attempt and device.status.state == "onboarding"
        delays.append((device.status.retry_at - device.now).total_seconds())
        _, message = device.poll()  # too early: backoff, same step
        assert message.service == "backoff"
        device.wait(delays[-1])
    assert delays == [30, 60]
    device.poll()
    device.fail("config-upgrade", message="no space")
    status = device.status
    assert status.state == "error" and status.error.code == "PnP Service Error 1410"
    assert "no space" in status.error.message and status.error.step == "config-upgrade"


def test_stale_correlator_is_acknowledged_and_changes_nothing():
    device = Device(declared())
    device.poll()
    before = device.status
    stale = messages.response(UDI, "device-info", "corr-old")
    decision = device.respond(stale)
    assert decision.event == "stale" and decision.status is None and device.status == before


def test_response_of_the_wrong_service_is_a_failed_attempt():
    device = Device(declared())
    device.poll()
    decision = device.ok("config-upgrade")  # right correlator, but device-info was asked
    assert decision.event == "wrong-service" and device.status.step == "device-info"
    assert device.status.attempts == 1 and device.status.error.code == "wrong-service"
    assert "device-info request with a config-upgrade response" in device.status.error.message


def test_a_retransmitted_response_does_not_advance_twice():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/x.bin", image_md5="b" * 32))
    device.poll()
    device.answer_device_info()
    assert device.status.correlator == "" and device.status.step == "image-install"
    assert device.answer_device_info().event == "unexpected"  # the same answer again: the correlator was used
    assert device.status.step == "image-install"


def test_a_response_from_an_older_revision_changes_nothing():
    device = Device(declared())
    device.poll()
    before = device.status
    device.record = dataclasses.replace(device.record, work=plan(declared(hostname="renamed")))
    decision = device.answer_device_info()
    assert decision.status is None and device.status == before


def test_the_retry_backoff_is_capped():
    settings = Settings(max_attempts=20, retry_base_seconds=30, retry_max_seconds=300)
    assert [settings.retry_delay(n) for n in (1, 2, 3, 4, 5, 10)] == [30, 60, 120, 240, 300, 300]
    device = Device(declared(), settings)
    device.poll()
    device.answer_device_info()
    for _ in range(8):
        device.poll()
        device.fail("config-upgrade")
        assert (device.status.retry_at - device.now).total_seconds() <= 300
        device.wait(300)


def test_a_success_after_a_failure_clears_the_old_error():
    device = Device(declared())
    device.poll()
    device.fail("device-info")
    assert device.status.error.code
    device.wait(30)
    device.poll()
    device.answer_device_info()
    device.poll()
    device.ok("config-upgrade")
    assert device.status.state == "provisioned" and device.status.error.code == "" and device.status.error.message == ""


def test_a_fault_to_the_outstanding_request_is_a_failed_attempt_bounded_by_max_attempts():
    device = Device(declared(), Settings(max_attempts=3, retry_base_seconds=30))
    for attempt in (1, 2, 3):
        _, message = device.poll()
        assert message.service == "device-info"
        decision = device.respond(messages.fault(UDI, "Client", "cannot parse the request"))
        assert decision.event == "fault" and device.status.attempts == attempt
        assert device.status.error.message.startswith("cannot parse the request")
        device.wait(3600)
    assert device.status.state == "error" and "gave up after 3 attempts" in device.status.error.message
    assert device.poll()[1].service == "backoff"


def test_a_fault_when_nothing_is_outstanding_changes_nothing():
    device = Device(declared())
    decision = device.respond(messages.fault(UDI, "Client", "cannot parse"))
    assert decision.event == "unexpected" and decision.recheck and device.status is None


def test_response_when_nothing_was_sent_changes_nothing():
    device = Device(declared())
    device.correlator = "corr-x"
    assert device.ok("device-info").event == "unexpected" and device.status is None


def test_image_is_installed_then_the_next_poll_asks_the_device_what_it_runs():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/cat9k.bin", image_md5="b" * 32,
                             image_reload_wait=120))
    device.poll()
    device.answer_device_info(version="17.3.1")
    _, message = device.poll()
    assert message.service == "image-install"
    assert message.find_text("image/copy/source/checksum") == "b" * 32
    assert message.find_text("image/copy/destination/location") == "flash:"
    device.ok("image-install")
    assert device.status.phase == "verify" and device.status.retry_at is None
    assert device.status.deadline == device.now + dt.timedelta(seconds=120)
    device.wait(5)
    _, message = device.poll(reloaded=True)  # back from the reload: asked at once
    assert message.service == "device-info"
    device.answer_device_info(version="17.9.4a")
    assert device.status.step == "config-upgrade" and device.status.facts.version == "17.9.4a"


def test_an_old_version_before_the_reload_gets_a_backoff_not_a_second_install():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/x.bin", image_md5="b" * 32,
                             image_reload_wait=120), Settings(max_attempts=2))
    device.install_from("17.3.1")
    device.wait(1)
    _, message = device.poll()  # the agent polls once more before it reloads (seen on ISR1k 17.x)
    assert message.service == "device-info"
    device.answer_device_info(version="17.3.1")
    assert device.status.phase == "verify" and device.status.attempts == 0
    _, message = device.poll()
    assert message.service == "backoff" and "reload" in message.find_text("backoff/reason")
    _, message = device.poll(reloaded=True)  # it reloaded: no need to wait for the backoff
    assert message.service == "device-info"
    device.answer_device_info(version="17.9.4a")
    assert device.status.step == "config-upgrade"


def test_the_old_version_after_a_reload_is_a_failed_attempt():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/x.bin", image_md5="b" * 32),
                    Settings(max_attempts=2))
    device.install_from("17.3.1")
    device.wait(10)
    device.poll(reloaded=True)
    device.answer_device_info(version="17.3.1")
    assert device.status.attempts == 1 and device.status.phase == "" and device.status.error.code == "image-not-running"
    device.wait(30)
    _, message = device.poll()
    assert message.service == "image-install"


def test_no_reload_within_reload_wait_is_a_failed_attempt():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/x.bin", image_md5="b" * 32,
                             image_reload_wait=60), Settings(max_attempts=3))
    device.install_from("17.3.1")
    for _ in range(3):
        device.wait(25)
        _, message = device.poll()
        if message.service == "device-info":
            device.answer_device_info(version="17.3.1")
    assert device.status.error.code == "no-reload" and "did not reload within reload-wait (60 s)" in device.status.error.message


def test_a_failed_install_is_checked_before_installing_again():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/x.bin", image_md5="b" * 32))
    device.poll()
    device.answer_device_info(version="17.3.1")
    device.poll()
    device.fail("image-install", code="PnP Service Error 1829", message="copy timed out")
    device.wait(30)
    _, message = device.poll()
    assert message.service == "device-info"  # it may have installed anyway
    device.answer_device_info(version="17.9.4a")
    assert device.status.step == "config-upgrade"


def test_a_device_that_polls_without_answering_the_install_is_asked_what_it_runs():
    device = Device(declared(image_version="17.9.4a", image_url="http://i.invalid/x.bin", image_md5="b" * 32))
    device.poll()
    device.answer_device_info(version="17.3.1")
    _, message = device.poll()
    assert message.service == "image-install"
    _, message = device.poll(reloaded=True)  # no answer: it reloaded during the install
    assert message.service == "device-info" and device.status.phase == "verify"


def test_image_already_running_is_skipped():
    device = Device(declared(image_version="17.3.1", image_url="http://i/x.bin", image_md5="b" * 32))
    device.poll()
    device.answer_device_info(version="17.3.1")
    _, message = device.poll()
    assert message.service == "config-upgrade"


def test_credentials_only_when_the_agent_asks():
    device = Device(declared(username="admin", password="pw"))
    _, message = device.poll()
    assert message.username is None
    _, message = device.poll(auth_required=True)
    assert (message.username, message.password) == ("admin", "pw")


def test_changed_declaration_starts_over():
    device = Device(declared())
    device.poll()
    device.answer_device_info()
    device.poll()
    device.ok("config-upgrade")
    assert device.status.state == "provisioned"
    device.record = dataclasses.replace(device.record, work=plan(declared(hostname="renamed")))
    _, message = device.poll()
    assert message.service == "device-info" and device.status.state == "onboarding"
    assert device.status.revision == device.record.work.revision


def failed_once(device: Device) -> None:
    """Drive the device into error (its settings allow one attempt): config-upgrade fails."""
    device.poll()
    device.answer_device_info()
    device.poll()
    device.fail("config-upgrade")


def test_error_is_cleared_by_a_new_revision():
    device = Device(declared(), Settings(max_attempts=1))
    failed_once(device)
    assert device.status.state == "error"
    device.record = dataclasses.replace(device.record, work=plan(declared(hostname="sw2")))
    _, message = device.poll()
    assert message.service == "device-info" and device.status.state == "onboarding"


def test_idle_polls_do_not_write_every_time():
    device = Device(declared(), Settings(max_attempts=1))
    failed_once(device)
    assert device.status.state == "error"
    writes = device.writes
    for _ in range(5):
        device.wait(5)
        device.poll()
    assert device.writes == writes
    device.wait(400)
    device.poll()
    assert device.writes == writes + 1 and device.status.last_contact == device.now


def test_unknown_step_type_is_an_error_not_a_crash():
    device = Device(declared(), registry=StepRegistry({}, load_entry_points=False))
    _, message = device.poll()
    assert message.service == "backoff" and device.status.error.code == "unknown-step-type"


def test_a_registered_step_type_is_used():
    class Inventory:
        name = "inventory"

        def service(self, step, phase):
            return "cli-exec"

        def is_done(self, step, status):
            return False

        def request(self, step, status, ctx):
            return protocol.cli_exec(ctx.envelope, "show inventory")

        def on_response(self, step, status, response):
            return advance()

    registry = StepRegistry(load_entry_points=False)
    registry.register("inventory", Inventory())
    device = Device(declared(), registry=registry)
    from pnp_service.model import Step, Work

    device.record = dataclasses.replace(device.record, work=Work("0" * 16, (Step("inv", "inventory"),)))
    _, message = device.poll()
    assert message.find_text("execCLI/cmd") == "show inventory"
    device.respond(messages.cli_exec_output(UDI, device.correlator, "show inventory", "x"))
    assert device.status.state == "provisioned"


def test_states_are_the_yangs_enumeration():
    import glob
    import os
    import re

    from conftest import REPO
    from pnp_service.model import State

    (module,) = glob.glob(os.path.join(REPO, "yang", "pnp-service@*.yang"))
    typedef = open(module).read().split("typedef device-state", 1)[1].split("\n  }\n", 1)[0]
    assert re.findall(r"enum (\S+) \{", typedef) == [state.value for state in State]


def test_the_https_bootstrap_step_goes_first_and_no_work_stays_no_work():
    from pnp_service.model import Step
    bootstrap = Step("https-bootstrap", "certificate-install", {})
    work = plan(declared())
    served = Provisioner(Settings(https_bootstrap=bootstrap)).effective_work(work)
    assert served.revision == work.revision and served.steps == (bootstrap, *work.steps)
    assert Provisioner(Settings(https_bootstrap=bootstrap)).effective_work(None) is None  # a serial with no work
    assert Provisioner(Settings()).effective_work(work) == work


def test_a_step_the_work_no_longer_has_starts_the_work_over_from_its_first_step():
    device = Device(declared())
    device.poll()
    device.answer_device_info()
    device.poll()
    device.fail("config-upgrade")
    assert device.status.step == "config-upgrade" and device.status.attempts == 1
    # The same revision without that step (a listener that no longer puts its HTTPS bootstrap first, say).
    device.record = dataclasses.replace(device.record, status=dataclasses.replace(device.status, step="gone"))
    device.wait(3600)
    _, message = device.poll()
    first = device.record.work.steps[0]
    assert message.service == first.type == "device-info"
    assert device.status.step == first.id and device.status.attempts == 0


# --------------------------------------------------------------------------- a switch declared by where it is plugged in

from pnp_service.neighbours import Location  # noqa: E402
from pnp_service.provisioner import Event  # noqa: E402

AT_48 = Location("dist-sw-1", "GigabitEthernet1/0/48")
UPLINK_48 = messages.Uplink("TenGigabitEthernet1/1/1", "DIST-SW-1.campus.example.net", "Gi1/0/48")


def stranger(locations, stacks=None) -> Device:
    device = Device(None)
    device.record = dataclasses.replace(device.record, locations=locations, stacks=stacks or {})
    return device


def test_a_stranger_is_asked_its_neighbours_and_bound_to_the_location_they_name():
    device = stranger({AT_48: ""})
    decision, message = device.poll()
    assert decision.event == Event.PROBE and message.service == "topology"
    assert device.record.unclaimed.probe == "topology"
    bound = device.respond(messages.topology_response(device.udi, device.correlator, [UPLINK_48]))
    assert bound.event == Event.LOCATED and bound.located_at == AT_48 and bound.changes


def test_an_agent_without_the_topology_service_is_located_through_the_cdp_then_the_lldp_table():
    device = stranger({AT_48: ""})
    device.poll()
    device.respond(messages.fault(device.udi, "Client", "unknown service topology"))
    _, message = device.poll()
    assert message.service == "cli-exec" and device.record.unclaimed.probe == "cdp"
    device.respond(messages.cli_exec_output(device.udi, device.correlator, "show cdp neighbors detail", ""))
    _, message = device.poll()  # CDP lists nothing there (disabled upstream): LLDP next
    assert message.service == "cli-exec" and device.record.unclaimed.probe == "lldp"
    output = messages.lldp_neighbors_detail([UPLINK_48])
    bound = device.respond(messages.cli_exec_output(device.udi, device.correlator, "show lldp neighbors detail", output))
    assert bound.located_at == AT_48
    decision, message = stranger({AT_48: ""}).poll()  # a new round begins with the topology service again
    assert message.service == "topology"


def test_a_location_bound_to_another_serial_is_refused_and_says_whom_to_reset():
    device = stranger({AT_48: "FOC0000OTHER"})
    device.poll()
    refused = device.respond(messages.topology_response(device.udi, device.correlator, [UPLINK_48]))
    assert refused.event == Event.LOCATION_REFUSED and refused.located_at is None
    assert "FOC0000OTHER" in device.record.unclaimed.note and "reset" in device.record.unclaimed.note
    decision, message = device.poll()  # the round ended: no more questions until contact_refresh_seconds
    assert decision.event == Event.UNCLAIMED and message.service == "backoff"


def test_a_switch_that_matches_two_locations_is_refused_with_both_named():
    other = Location("dist-sw-2", "Gi1/0/1")
    device = stranger({AT_48: "", other: ""})
    device.poll()
    uplinks = [UPLINK_48, messages.Uplink("TenGigabitEthernet1/1/2", "dist-sw-2", "GigabitEthernet1/0/1")]
    refused = device.respond(messages.topology_response(device.udi, device.correlator, uplinks))
    assert refused.event == Event.LOCATION_REFUSED and refused.located_at is None
    assert str(AT_48) in refused.detail and str(other) in refused.detail


def test_a_stranger_is_asked_for_stack_membership_first_then_for_its_neighbours():
    device = stranger({AT_48: ""}, stacks={"FOC0000STACK": "FOC0000STACK"})
    _, message = device.poll()
    assert message.service == "device-info"
    device.answer_device_info()
    _, message = device.poll()
    assert message.service == "topology"


def test_a_fault_from_another_address_is_not_taken_for_the_strangers():
    device = stranger({AT_48: ""})
    device.poll()
    response = protocol.parse_work_response(messages.fault(device.udi, "Client", "unknown service topology"))
    elsewhere = dataclasses.replace(device.contact(), address="192.0.2.99")
    decision = device.provisioner.on_work_response(device.record, response, elsewhere)
    assert decision.event != Event.UNCLAIMED and decision.unclaimed is None

