"""gaudi-nb doctor: honest on this CPU machine, and on a Gaudi node (a stand-in hl-smi, the only
thing that cannot exist here) it reports driver, firmware, plugin against optimum-habana's
validated release, execution mode, free modules, Intel's DeepSpeed fork and hugepages."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
from test_launch import install_distribution, install_fake_hlsmi

from gaudi_nb import doctor
from gaudi_nb.launch import FORK_PIP
from gaudi_nb.launch.modules import ModuleState

MEMINFO_NO_HUGEPAGES = "MemTotal:       16384000 kB\nHugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n"
MEMINFO_INTEL_K8S = "MemTotal:     1878000000 kB\nHugePages_Total:   47500\nHugePages_Free:    47500\nHugepagesize:       2048 kB\n"


def rows(report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {row["name"]: row for row in report["checks"]}


def gaudi_rows(state: Any, environ: Dict[str, str], meminfo: str = MEMINFO_NO_HUGEPAGES, validated: str = "1.24.0") -> Dict[str, Dict[str, Any]]:
    checks: List[Dict[str, Any]] = []

    def check(name: str, found: Any, ok: bool, hint: str = "") -> None:
        checks.append({"name": name, "found": found, "ok": ok, "hint": "" if ok else hint})

    doctor.gaudi_checks(check, True, state, validated, environ, meminfo)
    return {row["name"]: row for row in checks}


def test_on_this_cpu_machine_every_gaudi_row_says_there_is_no_card(gaudi_home, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no hl-smi
    report = rows(doctor.report())
    assert report["accelerator"]["found"] == "cpu" and report["accelerator"]["ok"] is False
    for name in ("Gaudi driver", "Gaudi firmware", "free Gaudi modules", "HPU execution mode"):
        assert "no Gaudi card here" in report[name]["found"], report[name]
    assert "no Gaudi card here" in report["hugepages"]["found"]
    assert report["habana-torch-plugin"] == {
        "name": "habana-torch-plugin", "found": "missing", "ok": False,
        "hint": "comes with Intel Gaudi software 1.24 (Docker image or installer), not PyPI",
    }
    assert report["store"]["ok"] is True  # the store line is unchanged


def test_validated_release_is_read_without_importing_optimum_habana():
    # optimum/habana/__init__.py crashes without the Gaudi plugin; the doctor reads the constant from source
    code = ("import sys; from gaudi_nb.doctor import validated_synapse_version as v; "
            "print(v(), 'optimum.habana' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["1.24.0", "False"]  # optimum-habana 1.21.2's CURRENTLY_VALIDATED_SYNAPSE_VERSION
    assert doctor.parse_validated_version('CURRENTLY_VALIDATED_SYNAPSE_VERSION = version.parse("1.23.0")\n') == "1.23.0"
    assert doctor.parse_validated_version("X = 1\n") is None


def test_plugin_of_another_release_is_flagged(gaudi_home, monkeypatch, tmp_path):
    # the Gaudi PyTorch plugin cannot be installed here: its metadata, as Intel's 1.23 image has it
    install_distribution(tmp_path / "site", "habana-torch-plugin", "1.23.0.695")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugin = rows(doctor.report())["habana-torch-plugin"]
    assert plugin["found"] == "1.23.0.695" and plugin["ok"] is False
    assert "validated with Intel Gaudi software 1.24.0" in plugin["hint"]
    assert doctor.same_release("1.24.0.272", "1.24.0") and not doctor.same_release("1.23.0", "1.24.0")


def test_on_a_gaudi_node_driver_firmware_and_free_modules(gaudi_home, monkeypatch, tmp_path):
    install_fake_hlsmi(tmp_path, monkeypatch)
    monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)
    report = rows(doctor.report())
    driver = report["Gaudi driver"]
    assert driver["found"] == "1.23.0-2eae87a" and driver["ok"] is False  # optimum-habana 1.21.2 wants 1.24
    assert "validated with Intel Gaudi software 1.24.0" in driver["hint"]
    assert report["Gaudi firmware"] == {"name": "Gaudi firmware", "found": "62.2.1.1", "ok": True, "hint": ""}
    modules = report["free Gaudi modules"]
    assert modules["ok"] is True
    assert modules["found"] == "2,3,4,5,6,7 of 0,1,2,3,4,5,6,7; busy: 0 (pid 2006754), 1 (pid 2006755)"
    assert report["HPU execution mode"]["found"].startswith("eager with torch.compile (PT_HPU_LAZY_MODE unset")
    deepspeed = report["DeepSpeed"]
    assert deepspeed["ok"] is False and FORK_PIP in deepspeed["hint"]


def test_doctor_json_on_a_gaudi_node_through_the_cli(gaudi_home, monkeypatch, tmp_path):
    install_fake_hlsmi(tmp_path, monkeypatch)
    done = subprocess.run([str(Path(sys.executable).parent / "gaudi-nb"), "doctor", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = rows(json.loads(done.stdout))
    assert report["Gaudi driver"]["found"] == "1.23.0-2eae87a"
    assert report["free Gaudi modules"]["found"].startswith("2,3,4,5,6,7 of")


def test_every_module_busy_and_hl_smi_silent():
    state = ModuleState(present=(0, 1), busy={0: (11,), 1: (12,)}, driver_version="1.24.0-abc", firmware_version=None)
    report = gaudi_rows(state, {})
    assert report["free Gaudi modules"]["ok"] is False and "none of 0,1" in report["free Gaudi modules"]["found"]
    assert report["Gaudi driver"]["ok"] is True
    assert report["Gaudi firmware"]["ok"] is False
    silent = gaudi_rows(None, {})  # a Gaudi card, but hl-smi did not answer
    assert silent["Gaudi driver"] == {"name": "Gaudi driver", "found": "hl-smi did not answer", "ok": False,
                                      "hint": "hl-smi comes with the Gaudi driver: run it in a terminal to see why"}


@pytest.mark.parametrize("value, mode", [
    (None, "eager with torch.compile (PT_HPU_LAZY_MODE unset"), ("0", "eager with torch.compile (PT_HPU_LAZY_MODE=0)"),
    ("1", "lazy (PT_HPU_LAZY_MODE=1"),
])
def test_execution_mode(value, mode):
    environ = {} if value is None else {"PT_HPU_LAZY_MODE": value}
    assert doctor.execution_mode(environ).startswith(mode)


def test_deepspeed_fork_row(tmp_path, monkeypatch):
    state = ModuleState(present=tuple(range(8)))
    install_distribution(tmp_path / "fork", "deepspeed", "0.16.1+hpu.synapse.v1.24.0")
    monkeypatch.syspath_prepend(str(tmp_path / "fork"))
    assert gaudi_rows(state, {})["DeepSpeed"] == {
        "name": "DeepSpeed", "found": "0.16.1+hpu.synapse.v1.24.0 (Intel's fork for Gaudi software 1.24.0)", "ok": True, "hint": ""}
    # the fork of another release is flagged like the plugin
    install_distribution(tmp_path / "old", "deepspeed", "0.16.1+hpu.synapse.v1.21.0")
    monkeypatch.syspath_prepend(str(tmp_path / "old"))
    old = gaudi_rows(state, {})["DeepSpeed"]
    assert old["ok"] is False and "for Gaudi software 1.21.0" in old["hint"] and FORK_PIP in old["hint"]
    install_distribution(tmp_path / "public", "deepspeed", "0.16.1")
    monkeypatch.syspath_prepend(str(tmp_path / "public"))
    public = gaudi_rows(state, {})["DeepSpeed"]
    assert public["ok"] is False and "Intel does not support public DeepSpeed on Gaudi" in public["hint"]


def test_hugepages_where_intel_requires_them():
    state = ModuleState(present=tuple(range(8)))
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    missing = gaudi_rows(state, pod, MEMINFO_NO_HUGEPAGES)["hugepages"]
    assert missing["ok"] is False and "hugepages-2Mi: 95000Mi" in missing["hint"] and "resources.limits" in missing["hint"]
    assert gaudi_rows(state, pod, MEMINFO_INTEL_K8S)["hugepages"] == {"name": "hugepages", "found": "95,000 MiB", "ok": True, "hint": ""}
    bare_metal = gaudi_rows(state, {}, MEMINFO_NO_HUGEPAGES)["hugepages"]
    assert bare_metal["ok"] is True and bare_metal["found"].startswith("0 MiB")
    assert doctor.hugepages_mib("MemTotal: 1 kB\n") is None



def stack_rows(on_gaudi, card=None, software=None, optimum_habana=True, pdsh=None):
    checks: List[Dict[str, Any]] = []

    def check(name: str, found: Any, ok: bool, hint: str = "") -> None:
        checks.append({"name": name, "found": found, "ok": ok, "hint": "" if ok else hint})

    doctor.stack_checks(check, on_gaudi, card, software, optimum_habana, pdsh)
    return {row["name"]: row for row in checks}


@pytest.mark.parametrize("card, software, found, ok", [
    ("HL-325L", "1.24.0.272", "Gaudi 3, supported by Gaudi software 1.24.0.272", True),
    ("HL-225", "1.24.0.272", "Gaudi 2, supported by Gaudi software 1.24.0.272", True),
    ("HL-205", "1.24.0.272", "Gaudi (first generation), NOT supported by Gaudi software 1.24.0.272", False),
    ("HL-205", "1.21.4", "Gaudi (first generation), supported by Gaudi software 1.21.4; first-generation Gaudi (HL-205) with Gaudi software "
                         "1.21.4, within the pin; 1.21's pip set: PyTorch 2.6.0 (Intel's build, from the image)", True),  # the last stack that has it
    ("HL-205", None, "Gaudi (first generation), support unknown; first-generation Gaudi (HL-205), Gaudi software release unknown: it must be "
                     "1.21 or older; 1.21's pip set: PyTorch 2.6.0 (Intel's build, from the image)", True),
])
def test_the_card_generation_and_whether_the_installed_software_supports_it(card, software, found, ok):
    row = stack_rows(True, card, software)["Gaudi generation"]
    assert (row["found"].split("; optimum-habana")[0], row["ok"]) == (found, ok)
    if not ok:  # the line a run there is refused with, word for word
        from gaudi_nb.gaudi_stack import first_gen_refusal

        assert row["hint"] == first_gen_refusal(card, software)
        assert "since Gaudi software 1.22" in row["hint"] and "--image AMI_ID" in row["hint"] and "Gaudi 2 / Gaudi 3" in row["hint"]


def test_pdsh_and_the_trainer_stacks_support_state():
    on_gaudi = stack_rows(True, "HL-225", "1.24.0", pdsh=None)
    assert on_gaudi["pdsh"]["ok"] is False and "apt-get install pdsh" in on_gaudi["pdsh"]["hint"]
    assert stack_rows(True, "HL-225", "1.24.0", pdsh="/usr/bin/pdsh")["pdsh"] == {"name": "pdsh", "found": "/usr/bin/pdsh", "ok": True, "hint": ""}
    assert stack_rows(False)["pdsh"]["ok"] is True and stack_rows(False)["Gaudi generation"]["found"] == "no Gaudi card here"
    stack = on_gaudi["trainer stack"]["found"]
    assert stack.startswith("--trainer auto on Gaudi: transformers, supported")
    assert "--trainer optimum-habana: optimum-habana 1.21.2 is past end of support" in stack
    assert "optimum-habana" not in stack_rows(True, "HL-225", "1.24.0", optimum_habana=False)["trainer stack"]["found"]


def test_on_a_dl1_node_doctor_says_first_generation_is_out_of_the_installed_softwares_support(gaudi_home, monkeypatch, tmp_path):
    install_fake_hlsmi(tmp_path, monkeypatch, query_csv="HL-205\nHL-205\n")  # `hl-smi -Q name` on dl1.24xlarge
    install_distribution(tmp_path / "site", "habana-torch-plugin", "1.24.0.272")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    report = rows(doctor.report())
    assert report["Gaudi generation"]["found"] == "Gaudi (first generation), NOT supported by Gaudi software 1.24.0.272"
    assert report["Gaudi generation"]["ok"] is False
    assert "past end of support" in report["trainer stack"]["found"] and report["pdsh"]["ok"] is False


def test_a_local_run_on_first_generation_gaudi_is_pinned_to_gaudi_software_1_21(gaudi_home, monkeypatch, tmp_path, capsys):
    """This machine is the node: an HL-205 card (a stand-in hl-smi) with Gaudi software 1.24 refuses the run in one
    line, exit 2, before anything is written; with 1.21 the same check lets it go on."""
    from gaudi_nb import cli
    from gaudi_nb.spec import RunSpec
    from gaudi_nb.targets.local import LocalTarget

    install_fake_hlsmi(tmp_path, monkeypatch, query_csv="HL-205\nHL-205\n")  # `hl-smi -Q name` on dl1.24xlarge
    install_distribution(tmp_path / "site", "habana-torch-plugin", "1.24.0.272")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "hpu")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "tiny-llama", "--max-steps", "2"])
    said = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in said
    assert said.startswith("error: first-generation Gaudi (HL-205) with Gaudi software 1.24.0.272: out of Intel's support matrix since Gaudi software 1.22")
    assert "use an image with Gaudi software 1.21 (gaudi-nb nodes provision aws --image AMI_ID)" in said
    assert not (gaudi_home / "runs").exists() or not any((gaudi_home / "runs").iterdir())  # nothing half-done
    spec = RunSpec.from_options(model="tiny-llama", max_steps=2)
    (tmp_path / "site" / "habana_torch_plugin-1.24.0.272.dist-info").rename(tmp_path / "site" / "habana_torch_plugin-1.21.0.dist-info")
    (tmp_path / "site" / "habana_torch_plugin-1.21.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: habana-torch-plugin\nVersion: 1.21.0\n")
    LocalTarget().check(spec)  # the last stack that supports it: the run goes on
    row = rows(doctor.report())["Gaudi generation"]
    assert row["ok"] and "first-generation Gaudi (HL-205) with Gaudi software 1.21.0, within the pin" in row["found"] and "optimum-habana==1.18.1" in row["found"]
    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "cpu")  # a CPU run on the same machine is not judged by the card
    install_distribution(tmp_path / "newer", "habana-torch-plugin", "1.24.0")
    monkeypatch.syspath_prepend(str(tmp_path / "newer"))
    LocalTarget().check(spec)
