"""The launcher's Machines tab: built from AttachSpec and ProvisionSpec, the price and autostop shown before anything is made,
a real attach over the test sshd, and the machines list with state, dollars, Start and Down (which asks first)."""
from __future__ import annotations

import html
import sys
import time
from pathlib import Path

import pytest

import gaudi_nb
from gaudi_nb.machine_spec import AttachSpec, ProvisionSpec
from gaudi_nb.store import RunStore

VENV_PYTHON = str(Path(sys.executable).parent / "python")


def cli_refusal(capsys, *args: str) -> str:
    from gaudi_nb.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(list(args))
    return capsys.readouterr().err.strip()


def test_the_forms_are_the_specs_and_say_the_price_and_autostop_first(gaudi_home, capsys):
    tab = gaudi_nb.launcher().machines
    assert list(tab.attach_fields) == list(AttachSpec.model_fields) and list(tab.provision_fields) == list(ProvisionSpec.model_fields)
    assert "aws" in tab.provision_fields["provider"].options and "stop" in tab.provision_fields["autostop_action"].options
    fields = tab.provision_fields
    fields["instance_type"].value = "dl1.24xlarge"
    fields["count"].value, fields["idle_minutes"].value, fields["budget_usd"].value = "2", "30", "40"
    text = tab.quote.value
    assert "2 × dl1.24xlarge" in text and "$13.11/h each, $26.22/h in all" in text and "autostop: stop after 30 idle minutes or at $40.00 spent" in text
    fields["autostop_action"].value = "terminate"
    assert "autostop: terminate after 30 idle minutes" in tab.quote.value
    # a refusal is the line the CLI prints for the same values, word for word
    fields["count"].value = "0"
    said = cli_refusal(capsys, "nodes", "provision", "aws", "--instance-type", "dl1.24xlarge", "--count", "0")
    assert said == "error: count: input should be greater than or equal to 1 (got 0)" and said in tab.quote.value
    tab.provision()
    assert said in tab.provision_message.value  # nothing was made: the spec refused it first
    tab.attach_fields["url"].value = "ssh://198.51.100.20"
    tab.attach()
    assert html.escape(cli_refusal(capsys, "nodes", "attach", "ssh://198.51.100.20")) in tab.attach_message.value


def test_attach_over_ssh_lists_the_machine_and_makes_it_a_target(gaudi_home, ssh_home, sshd):
    launcher = gaudi_nb.launcher()
    tab = launcher.machines
    tab.attach_fields["url"].value = sshd.url
    tab.attach_fields["name"].value = "tab-node"
    tab.attach_fields["python"].value = VENV_PYTHON
    record = tab.attach()
    assert record is not None and record["name"] == "tab-node", tab.attach_message.value
    assert "attached tab-node" in tab.attach_message.value
    assert "tab-node" in [value for _, value in launcher.target.options]  # the Train tab can use it at once
    (row,) = tab.rows.children
    assert 'data-name="tab-node"' in row.children[0].value and 'data-state="attached"' in row.children[0].value
    assert len(row.children) == 1  # an attached node has no Start or Down: gaudi_nb did not make it


def test_a_provisioned_machine_shows_state_and_dollars_and_down_asks_first(gaudi_home, monkeypatch):
    import gaudi_nb.nodes.provision as provisioning

    now = time.time()
    RunStore().add_node({"name": "pair-0", "url": "ssh://ubuntu@m:22", "user": "ubuntu", "host": "m", "port": 22, "provider": "aws", "region": "us-west-2",
                         "instance_type": "dl1.24xlarge", "instance_id": "i-1", "group": "pair", "state": "running", "price_per_hour": 13.11,
                         "launched_at": now - 3600, "running_since": now - 3600, "billed_intervals": []})
    downs = []
    monkeypatch.setattr(provisioning, "down", lambda name, progress=None: downs.append(name) or [])  # the cloud is what a test cannot have
    tab = gaudi_nb.launcher().machines
    (row,) = tab.rows.children
    label, start, down = row.children
    assert 'data-state="running"' in label.value and "spent $13.1" in label.value and "$13.11/h" in label.value
    assert start.disabled and not down.disabled  # a running machine cannot be started; it can be taken down
    down.click()
    assert "terminate pair-0?" in row.children[1].value and downs == []  # asked, nothing done
    row.children[3].click()  # Cancel
    assert row.children[1] is start and downs == []
    down.click()
    row.children[2].click()  # Yes, down
    deadline = time.monotonic() + 10
    while not downs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert downs == ["pair-0"]
