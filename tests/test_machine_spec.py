"""AttachSpec and ProvisionSpec: the CLI and the magics take the same values and refuse the same ones, with the same line."""
from __future__ import annotations

import shlex

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from gaudi_nb.errors import SpecError
from gaudi_nb.machine_spec import AttachSpec, ProvisionSpec
from gaudi_nb.spec import option_fields


def cli(capsys, *args):
    from gaudi_nb.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def shell(gaudi_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start_ipython()  # once per process (the shell test_magics uses too); later calls return None
    ip = get_ipython()
    ip.run_line_magic("load_ext", "gaudi_nb")
    magics = ip.magics_manager.registry["GaudiMagics"]
    yield ip
    magics.target = None


@pytest.fixture
def cloud(monkeypatch):
    """The cloud is what a test cannot have: provision and attach record what the door asked for."""
    import gaudi_nb.cost.billing as billing_module
    import gaudi_nb.nodes.attach as attach_module
    import gaudi_nb.nodes.provision as provision_module

    calls = []

    def provision(**keywords):
        keywords.pop("progress")
        calls.append(("provision", keywords))
        return [{"name": f"{keywords['name'] or 'aws-x'}-{i}", "group": keywords["name"] or "aws-x", "instance_id": f"i-{i}", "host": "198.51.100.20",
                 "url": "ssh://ubuntu@198.51.100.20", "identity_file": "/k", "state": "running", "provider": "aws"} for i in range(keywords["count"])]

    def attach(**keywords):
        keywords.pop("progress")
        calls.append(("attach", keywords))
        return {"name": keywords["name"] or "h", "url": keywords["url"], "accelerator": "cpu", "device_count": 0, "python": "/p", "gaudi_nb_version": "x"}

    monkeypatch.setattr(provision_module, "provision", provision)
    monkeypatch.setattr(billing_module, "with_spend", lambda records, now=None: records)
    monkeypatch.setattr(attach_module, "attach", attach)
    return calls


PROVISION_LINES = [
    ("aws --instance-type dl1.24xlarge", None),
    ("aws --instance-type dl1.24xlarge --count 2 --autostop-action terminate --idle-minutes 30 --budget-usd 40 --spot --no-attach --name g", None),
    ("ibm --instance-type gx3d-160x1792x8gaudi3 --region us-east", None),
    ("aws --instance-type dl1.24xlarge --count 0", "count: input should be greater than or equal to 1 (got 0)"),
    ("aws --instance-type dl1.24xlarge --count 65", "count: input should be less than or equal to 64 (got 65)"),
    ("aws --instance-type dl1.24xlarge --autostop-action hibernate", "autostop_action: must be one of 'stop' or 'terminate' (got 'hibernate')"),
    ("aws --instance-type dl1.24xlarge --idle-minutes -5", "idle_minutes: input should be greater than 0 (got -5.0)"),
    ("aws --instance-type dl1.24xlarge --budget-usd 0", "budget_usd: input should be greater than 0 (got 0.0)"),
    # nan compares false with every limit: autostop would report watching and never act
    ("aws --instance-type dl1.24xlarge --idle-minutes nan", "idle_minutes: input should be a finite number (got nan)"),
    ("aws --instance-type dl1.24xlarge --budget-usd inf", "budget_usd: input should be a finite number (got inf)"),
    ("gcp --instance-type a3", "provider: unknown provider 'gcp': use aws or ibm"),
    ("aws", "instance_type: required: give --instance-type"),
]


@pytest.mark.parametrize("line, refusal", PROVISION_LINES)
def test_provision_the_cli_and_the_magic_take_and_refuse_the_same(line, refusal, shell, cloud, capsys):
    code, _, err = cli(capsys, "nodes", "provision", *shlex.split(line))
    if refusal:
        assert code == 2 and err.strip() == f"error: {refusal}", err
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("gaudi_provision", line)
        assert str(info.value) == refusal
        assert cloud == []  # nothing was asked of the cloud
        return
    assert code == 0, err
    shell.run_line_magic("gaudi_provision", line)
    (door, by_cli), (_, by_magic) = cloud
    assert door == "provision" and by_cli == by_magic
    assert set(by_cli) == set(ProvisionSpec.model_fields)  # the API's keywords are the spec's fields


ATTACH_LINES = [
    ("ssh://ubuntu@198.51.100.20 --name dl1 --trust-new-host", None),
    ("ssh://ubuntu@198.51.100.20:2222 --identity-file /k --jump ssh://me@bastion --python /usr/bin/python3", None),
    ("ssh://198.51.100.20", "url: 'ssh://198.51.100.20' names no user: write it as ssh://USER@HOST[:PORT] (ssh://root@10.0.0.5)"),
]


@pytest.mark.parametrize("line, refusal", ATTACH_LINES)
def test_attach_the_cli_and_the_magic_take_and_refuse_the_same(line, refusal, shell, cloud, capsys):
    code, _, err = cli(capsys, "nodes", "attach", *shlex.split(line))
    if refusal:
        assert code == 2 and err.strip() == f"error: {refusal}", err
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("gaudi_attach", line)
        assert str(info.value) == refusal
        return
    assert code == 0, err
    shell.run_line_magic("gaudi_attach", line)
    (_, by_cli), (_, by_magic) = cloud
    assert by_cli == by_magic and set(by_cli) == set(AttachSpec.model_fields)


def test_every_field_is_an_option_of_both_doors():
    from gaudi_nb.notebook.magics import GaudiMagics

    for spec, magic in ((ProvisionSpec, GaudiMagics.gaudi_provision), (AttachSpec, GaudiMagics.gaudi_attach)):
        for field in option_fields(spec):
            if not field.positional:
                assert field.flag in magic.__doc__, field.flag
    assert [f.name for f in option_fields(ProvisionSpec) if f.positional] == ["provider"]
    assert [f.name for f in option_fields(ProvisionSpec) if f.required] == ["provider", "instance_type"]


def test_provision_in_python_refuses_what_the_doors_refuse():
    import gaudi_nb

    with pytest.raises(SpecError, match=r"count: input should be greater than or equal to 1 \(got 0\)"):
        gaudi_nb.provision("aws", "dl1.24xlarge", count=0)
