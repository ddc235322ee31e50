"""infra/: the Terraform module, the Dockerfiles and binder/, checked by parsing (no cloud, no engine here)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "infra" / "terraform" / "aws"
DOCKER_DIR = ROOT / "infra" / "docker"
BINDER_DIR = ROOT / "binder"


REQUIRED_TAGS = {"project", "owner", "gaudi_nb_cluster"}
# AWS resource types in this module that take no tags argument.
UNTAGGABLE = {"aws_route_table_association", "aws_iam_role_policy", "aws_route"}
OPEN_CIDRS = ("0.0.0.0/0", "::/0")


# ------------------------------------------------------------------ helpers --


def _load(path: Path) -> Dict[str, Any]:
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 parses the Terraform files (dev extra)")
    with path.open() as handle:
        return hcl2.load(
            handle,
            serialization_options=hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False),
        )


@pytest.fixture(scope="module")
def tf() -> Dict[str, Dict[str, Any]]:
    files = sorted(TF_DIR.glob("*.tf"))
    assert files, f"no Terraform files in {TF_DIR}"
    return {path.name: _load(path) for path in files}


def _blocks(tf: Dict[str, Dict[str, Any]], kind: str) -> Iterator[Tuple[str, str, Dict[str, Any]]]:
    """(type, name, body) for every resource or data block in every file."""
    for doc in tf.values():
        for entry in doc.get(kind, []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    yield rtype, name, body


def _variables(tf: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for doc in tf.values():
        for entry in doc.get("variable", []):
            out.update(entry)
    return out


def _outputs(tf: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for doc in tf.values():
        for entry in doc.get("output", []):
            out.update(entry)
    return out


def _locals(tf: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for doc in tf.values():
        for entry in doc.get("locals", []):
            out.update(entry)
    return out


# ---------------------------------------------------------------- terraform --


def test_every_terraform_file_parses_and_the_module_has_its_parts(tf):
    assert {"main.tf", "variables.tf", "outputs.tf", "versions.tf"} <= set(tf)
    required = tf["versions.tf"]["terraform"][0]["required_providers"][0]
    assert required["aws"]["source"] == "hashicorp/aws"


def test_every_variable_has_a_description_and_a_type(tf):
    variables = _variables(tf)
    assert variables
    for name, body in variables.items():
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"


def test_inputs_cover_what_a_user_chooses(tf):
    variables = _variables(tf)
    for name in ("instance_type", "instance_count", "region", "ami_id", "key_name", "allowed_ssh_cidr", "vpc_id", "subnet_id", "owner"):
        assert name in variables, f"variable {name} is missing"
    assert variables["instance_type"]["default"] == "dl1.24xlarge"


def test_terraform_and_the_provider_look_for_the_same_image_and_say_dl1_is_out_of_support(tf):
    from gaudi_nb.nodes.providers.aws import IMAGE_NAME, IMAGE_RELEASE

    variables = _variables(tf)
    # one pattern and one release rule: what `gaudi-nb nodes provision aws` finds, Terraform finds (neither names an
    # Ubuntu release AWS may not publish); HCL writes a backslash twice
    assert variables["ami_name_filter"]["default"] == IMAGE_NAME and "22.04" not in IMAGE_NAME
    assert variables["ami_name_regex"]["default"].replace("\\\\", "\\") == IMAGE_RELEASE
    data = {name: body for kind, name, body in _blocks(tf, "data") if kind == "aws_ami"}
    assert data["habana"]["name_regex"] == "${var.ami_name_regex}"
    assert "could not be confirmed" in variables["ami_name_filter"]["description"]
    assert "apt-get install -y pdsh" in (TF_DIR / "main.tf").read_text()  # first boot


def test_the_first_generation_pin_is_one_rule_said_in_the_same_words_everywhere(tf):
    """DL1 runs are pinned to Gaudi software 1.21: the AMI rule agrees with the pin, and the catalog, the provision
    warning, Terraform and the docs say it in gaudi_stack.FIRST_GEN_PIN's words."""
    from gaudi_nb.cost import catalog
    from gaudi_nb.gaudi_stack import FIRST_GEN_LAST_SOFTWARE, FIRST_GEN_PIN
    from gaudi_nb.nodes.providers.aws import IMAGE_RELEASE

    def name(release: str) -> str:
        return f"Deep Learning AMI Habana PyTorch 2.6.0 SynapseAI {release} (Ubuntu 20.04) 20250601"

    allowed = [f"1.{minor}.0" for minor in range(FIRST_GEN_LAST_SOFTWARE[1] + 1)] + ["0.15.4"]
    assert all(re.search(IMAGE_RELEASE, name(r)) for r in allowed)
    assert not any(re.search(IMAGE_RELEASE, name(r)) for r in ("1.22.0", "1.24.0", "1.30.1", "2.0.0"))

    def said(text: str) -> str:
        return " ".join(text.replace("**", "").split()).lower()  # a sentence may open with a capital

    for path in (TF_DIR / "README.md", ROOT / "docs" / "deployment.md"):
        assert FIRST_GEN_PIN.lower() in said(path.read_text()), path
    assert FIRST_GEN_PIN in _variables(tf)["instance_type"]["description"] and FIRST_GEN_PIN in _variables(tf)["ami_name_regex"]["description"]
    dl1 = [row for row in catalog.load_catalog() if row.instance_type == "dl1.24xlarge"]
    assert dl1 and all(FIRST_GEN_PIN in row.notes for row in dl1)


def test_ssh_cidr_has_no_default_and_refuses_the_whole_internet(tf):
    cidr = _variables(tf)["allowed_ssh_cidr"]
    assert "default" not in cidr, "allowed_ssh_cidr must be chosen by the user"
    conditions = " ".join(str(v.get("condition", "")) for v in cidr.get("validation", []))
    assert "var.allowed_ssh_cidr" in conditions
    assert "0.0.0.0/0" in conditions and "!contains" in conditions.replace(" ", "")


def test_no_ingress_is_open_to_the_internet_and_ssh_comes_from_the_allowed_cidr(tf):
    ingress = [(name, body) for rtype, name, body in _blocks(tf, "resource") if rtype == "aws_vpc_security_group_ingress_rule"]
    assert ingress, "the module must define its ingress rules"
    for name, body in ingress:
        for key in ("cidr_ipv4", "cidr_ipv6"):
            assert body.get(key) not in OPEN_CIDRS, f"ingress {name} is open to the internet"
        assert "cidr_ipv4" in body or "referenced_security_group_id" in body, f"ingress {name}: from where?"
    from_cidr = [body for _, body in ingress if "cidr_ipv4" in body]
    assert len(from_cidr) == 1, "only SSH may come from outside the group"
    ssh = from_cidr[0]
    assert ssh["cidr_ipv4"] == "${var.allowed_ssh_cidr}"
    assert ssh["ip_protocol"] == "tcp" and ssh["from_port"] == ssh["to_port"] == "${var.ssh_port}"
    assert _variables(tf)["ssh_port"]["default"] == 22
    within = [body for _, body in ingress if "referenced_security_group_id" in body]
    assert within and within[0]["referenced_security_group_id"] == "${aws_security_group.node.id}"
    assert within[0]["ip_protocol"] == "-1", "all traffic inside the group (EFA needs it)"
    # No inline ingress blocks that could bypass the checks above.
    for rtype, name, body in _blocks(tf, "resource"):
        if rtype == "aws_security_group":
            assert "ingress" not in body, f"{name}: use aws_vpc_security_group_ingress_rule"
        if rtype == "aws_security_group_rule":
            pytest.fail(f"{name}: use aws_vpc_security_group_ingress_rule / egress_rule")


def test_required_tags_on_every_taggable_resource(tf):
    provider = tf["main.tf"]["provider"][0]["aws"]
    assert provider["default_tags"][0]["tags"] == "${local.required_tags}"
    required = _locals(tf)["required_tags"]
    assert set(required) == REQUIRED_TAGS
    merged = _locals(tf)["tags"].replace(" ", "")
    assert merged.startswith("${merge(") and merged.endswith(",local.required_tags)}"), (
        "required tags must come last in the merge, so extra_tags cannot override them"
    )
    checked = 0
    for rtype, name, body in _blocks(tf, "resource"):
        if rtype in UNTAGGABLE:
            continue
        tags = str(body.get("tags", ""))
        assert "local.tags" in tags, f"{rtype}.{name} lacks tags = local.tags"
        checked += 1
    assert checked >= 10
    instance = dict((n, b) for t, n, b in _blocks(tf, "resource") if t == "aws_instance")["node"]
    assert "local.tags" in str(instance["root_block_device"][0]["tags"]), "the root volume needs the tags too"


def test_placement_group_and_efa(tf):
    resources = {(t, n): b for t, n, b in _blocks(tf, "resource")}
    assert resources[("aws_placement_group", "node")]["strategy"] == "cluster"
    assert resources[("aws_instance", "node")]["placement_group"] == "${aws_placement_group.node.id}"
    nic = resources[("aws_network_interface", "node")]
    assert nic["interface_type"] == '${local.efa ? "efa" : null}'
    locals_ = _locals(tf)
    assert "dl1.24xlarge" in locals_["efa_instance_types"]
    assert "contains(local.efa_instance_types, var.instance_type)" in locals_["efa"]


def test_iam_lets_a_node_stop_only_itself(tf):
    resources = {(t, n): b for t, n, b in _blocks(tf, "resource")}
    data = {(t, n): b for t, n, b in _blocks(tf, "data")}
    policies = [b for (t, _), b in resources.items() if t in ("aws_iam_role_policy", "aws_iam_policy", "aws_iam_role_policy_attachment")]
    assert len(policies) == 1, "one policy: stop self"
    assert policies[0]["policy"] == "${data.aws_iam_policy_document.stop_self.json}"
    assert "managed_policy_arns" not in resources[("aws_iam_role", "node")]
    statements = data[("aws_iam_policy_document", "stop_self")]["statement"]
    assert len(statements) == 1
    statement = statements[0]
    assert statement["effect"] == "Allow"
    assert statement["actions"] == ["ec2:StopInstances"]
    # $$ is Terraform's escape: IAM receives the literal ${ec2:SourceInstanceARN}.
    assert statement["resources"] == ["$${ec2:SourceInstanceARN}"]
    conditions = {(c["test"], c["variable"]): c["values"] for c in statement["condition"]}
    assert conditions[("StringEquals", "aws:ResourceTag/gaudi_nb_cluster")] == ["${var.cluster_name}"]
    # The role is assumed by EC2 only and reaches the node through its profile.
    assume = data[("aws_iam_policy_document", "assume_ec2")]["statement"][0]
    assert assume["principals"][0]["identifiers"] == ["ec2.amazonaws.com"]
    assert resources[("aws_instance", "node")]["iam_instance_profile"] == "${aws_iam_instance_profile.node.name}"


def test_nodes_are_hardened(tf):
    instance = {(t, n): b for t, n, b in _blocks(tf, "resource")}[("aws_instance", "node")]
    assert instance["metadata_options"][0]["http_tokens"] == "required"
    assert instance["root_block_device"][0]["encrypted"] is True
    assert instance["instance_initiated_shutdown_behavior"] == "stop"


def test_outputs_are_what_gaudi_nb_needs_to_attach(tf):
    outputs = _outputs(tf)
    for name in ("targets", "instance_ids", "public_ips", "private_ips", "ssh_user", "region"):
        assert name in outputs, f"output {name} is missing"
        assert str(outputs[name].get("description", "")).strip(), f"output {name} has no description"
    assert "ssh://${var.ssh_user}@${ip}" in outputs["targets"]["value"]


def _hand_off_commands() -> List[str]:
    """The README's hand-off block: its gaudi-nb lines, in order."""
    readme = (TF_DIR / "README.md").read_text()
    section = readme[readme.index("## Hand-off to gaudi-nb"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("gaudi-nb ")]


def _cli(capsys, line: str, target: str) -> Tuple[int, str, str]:
    import shlex

    from gaudi_nb.cli import main

    capsys.readouterr()
    try:
        main(shlex.split(line.replace('"$TARGET"', target))[1:])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_readmes_hand_off_works_as_written(node_install, gaudi_home, ssh_home, sshd, capsys, monkeypatch):
    """The documented commands, with a `targets` output (an sshd here: ssh://USER@IP:PORT) as $TARGET."""
    from gaudi_nb import api
    from gaudi_nb.store import RunStore

    (ssh_home / ".ssh" / "known_hosts").unlink()  # a machine Terraform just made: its host key is new here
    attach, train = _hand_off_commands()
    assert attach.startswith('gaudi-nb nodes attach "$TARGET"') and train.startswith("gaudi-nb train --target ")
    code, out, err = _cli(capsys, attach, sshd.url)
    assert code == 0, err
    name = RunStore().get_node(attach.split("--name ")[1].split()[0])["name"]
    assert f"attached {name} ({sshd.url})" in out

    # the train line, up to the launch: every check a run makes (the spec, the node by name, its preflight over SSH)
    checked = []

    def check_only(base, **options):
        api.check(api.build_spec(base, **options))  # raises, one line, where the run would not start
        checked.append(options["target"])
        raise SystemExit(0)

    monkeypatch.setattr(api, "train", check_only)
    code, _, err = _cli(capsys, train, sshd.url)
    assert code == 0 and checked == [name], err

    # the address itself is no target: one line that says how to attach it
    code, _, err = _cli(capsys, f"gaudi-nb train --target {sshd.url} --devices 8", sshd.url)
    assert code == 2 and err.strip() == f"error: target: {sshd.url} is not attached: gaudi-nb nodes attach {sshd.url} --name NAME (or %gaudi_attach), then --target NAME"


def test_readme_shows_the_hand_off():
    readme = (TF_DIR / "README.md").read_text()
    assert "terraform output -json targets" in readme
    assert "gaudi-nb train --target" in readme
    assert "allowed_ssh_cidr" in readme


# ------------------------------------------------------------------ docker --

SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL)", re.IGNORECASE)


def _dockerfile(name: str):
    dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse reads the Dockerfiles (dev extra)")
    import io

    # An in-memory file: the parser re-reads it on every property access.
    return dockerfile_parse.DockerfileParser(fileobj=io.BytesIO((DOCKER_DIR / name).read_bytes()))


def _assignments(value: str) -> List[Tuple[str, str]]:
    """NAME=value pairs of an ENV or ARG line (also the legacy `ENV NAME value` form)."""
    import shlex

    parts = shlex.split(value)
    if len(parts) >= 2 and "=" not in parts[0]:
        return [(parts[0], " ".join(parts[1:]))]
    return [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in parts]  # type: ignore[misc]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_base_image_is_pinned_by_tag(name):
    parser = _dockerfile(name)
    for image in parser.parent_images:
        assert "${" not in image, f"{image}: every build argument in FROM needs a default"
        assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), f"{image}: no tag"
        tag = image.rsplit(":", 1)[-1]
        assert tag != "latest", f"{image}: pin a tag, not latest"
        assert re.search(r"\d", tag), f"{image}: the tag should name a version"


def test_gaudi_image_is_intels_pytorch_image_with_the_version_as_build_argument():
    parser = _dockerfile("Dockerfile")
    (image,) = parser.parent_images
    assert image.startswith("vault.habana.ai/gaudi-docker/1.24.0/")
    assert "/habanalabs/pytorch-installer-" in image
    from_line = next(i["value"] for i in parser.structure if i["instruction"] == "FROM")
    assert "${GAUDI_VERSION}" in from_line and "${BASE_TAG}" in from_line
    assert "gaudi_nb[habana" in parser.content.replace("/opt/", "")


def test_gaudi_image_runs_the_projects_default_mode_and_has_pdsh_for_several_nodes():
    from gaudi_nb.spec import RunSpec

    parser = _dockerfile("Dockerfile")
    env = dict(pair for i in parser.structure if i["instruction"] == "ENV" for pair in _assignments(i["value"]))
    assert env["PT_HPU_LAZY_MODE"] == ("1" if RunSpec().lazy_mode else "0")  # eager, as every run by default
    installs = [i["value"] for i in parser.structure if i["instruction"] == "RUN" and "apt-get install" in i["value"]]
    assert any(re.search(r"\bpdsh\b", line) for line in installs)  # DeepSpeed's multi-node launcher
    assert "optimum-habana" in parser.content.replace("/opt/", "")  # --trainer optimum-habana keeps working in the image


def test_cpu_image_installs_torch_from_the_cpu_index():
    content = _dockerfile("Dockerfile.cpu").content
    assert "https://download.pytorch.org/whl/cpu" in content
    assert _dockerfile("Dockerfile.cpu").baseimage.startswith("python:3.11")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_runs_as_a_non_root_user(name):
    parser = _dockerfile(name)
    users = [i["value"].strip() for i in parser.structure if i["instruction"] == "USER"]
    assert users, "the image must switch to a non-root USER"
    final = users[-1]
    resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: parser.args.get(m.group(1), m.group(0)), final)
    assert resolved.split(":")[0] not in ("root", "0"), f"final USER is {resolved}"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_no_secrets_in_env_or_arg(name):
    parser = _dockerfile(name)
    for instr in parser.structure:
        if instr["instruction"] not in ("ENV", "ARG"):
            continue
        for key, value in _assignments(instr["value"]):
            if SECRET_NAME.search(key):
                assert not value.strip(), f"{instr['instruction']} {key} carries a value: secrets come at run time"
        assert not re.search(r"(AKIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{30,})", instr["value"]), "a credential in the image"
    assert not re.search(r"(AKIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{30,}|BEGIN [A-Z ]*PRIVATE KEY)", parser.content)


def test_secret_check_catches_what_it_should():
    # The check above is only worth something if it fails on a bad file.
    bad = [("HF_TOKEN", "hf_abc"), ("AWS_SECRET_ACCESS_KEY", "x"), ("DB_PASSWORD", "p")]
    assert all(SECRET_NAME.search(k) and v for k, v in bad)
    assert _assignments("HF_TOKEN=hf_abc OTHER=1") == [("HF_TOKEN", "hf_abc"), ("OTHER", "1")]
    assert _assignments("API_KEY secret") == [("API_KEY", "secret")]


def test_entrypoint_starts_lab_or_the_agent():
    script = (DOCKER_DIR / "entrypoint.sh").read_text()
    assert script.startswith("#!/bin/sh")
    assert "jupyter lab" in script
    assert "gaudi-nb train --spec-file" in script
    for name in ("Dockerfile", "Dockerfile.cpu"):
        content = _dockerfile(name).content
        assert "infra/docker/entrypoint.sh" in content and "ENTRYPOINT" in content


def test_docker_readme_says_how_to_build():
    readme = (DOCKER_DIR / "README.md").read_text()
    assert "docker build -f infra/docker/Dockerfile" in readme
    assert "docker build -f infra/docker/Dockerfile.cpu" in readme


# ------------------------------------------------------------------ binder --


def test_binder_installs_cpu_torch_and_the_package():
    requirements = (BINDER_DIR / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert re.search(r"^torch==[\d.]+\+cpu$", requirements, re.MULTILINE)
    post_build = BINDER_DIR / "postBuild"
    assert post_build.stat().st_mode & 0o111, "postBuild must be executable"
    text = post_build.read_text()
    assert text.startswith("#!") and 'pip install --no-cache-dir -e ".[notebook,dashboard]"' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^notebook\s*=", pyproject, re.MULTILINE), "the [notebook] extra postBuild installs"


def test_binder_points_at_the_notebooks():
    readme = (BINDER_DIR / "README.md").read_text()
    assert "notebooks%2F01_quickstart.ipynb" in readme and "notebooks/" in readme
    assert (ROOT / "notebooks").is_dir()
