import pytest

from gaudi_nb.errors import SpecError
from gaudi_nb.spec import RunSpec


def test_defaults_are_a_small_cpu_friendly_run():
    spec = RunSpec()
    assert spec.model == "tiny-llama" and spec.devices == 1 and spec.precision == "auto" and spec.target == "local"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"devices": 0}, "devices: input should be greater than or equal to 1 (got 0)"),
        ({"budget_usd": -1}, "budget_usd: input should be greater than 0"),
        ({"budget_usd": float("nan")}, "budget_usd: input should be a finite number (got nan)"),
        ({"price_per_hour": -1}, "price_per_hour: input should be greater than or equal to 0 (got -1)"),
        ({"price_per_hour": float("inf")}, "price_per_hour: input should be a finite number (got inf)"),
        ({"idle_minutes": "nan"}, "idle_minutes: input should be a finite number"),
        ({"precision": "fp16"}, "precision: must be one of 'auto', 'bf16' or 'fp32' (got 'fp16')"),
        ({"target": "gcp:a3"}, "target: unknown target 'gcp:a3': use local, an attached node's name (gaudi-nb nodes list) or NAME1,NAME2"),
        ({"target": "aws:dl1.24xlarge"}, "target: aws:dl1.24xlarge: make the machine first, then train on it by name: gaudi-nb nodes provision aws --instance-type dl1.24xlarge"),
        ({"target": "ssh://ubuntu@10.0.0.5:2222"}, "target: ssh://ubuntu@10.0.0.5:2222 is not attached: gaudi-nb nodes attach ssh://ubuntu@10.0.0.5:2222 --name NAME"),
        ({"learning_rate": "fast"}, "learning_rate: input should be a valid number"),
        ({"colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(options, message):
    with pytest.raises(SpecError) as info:
        RunSpec.from_options(**options)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_spec_round_trips_through_json():
    spec = RunSpec(model="tiny-gpt2", devices=8, budget_usd=12.5, price_per_hour=13.11)
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


def test_validation_is_pure_and_never_touches_the_filesystem(tmp_path, monkeypatch):
    # a spec names files on the client; whether they exist is api.check()'s question, asked once, there
    monkeypatch.chdir(tmp_path)
    assert RunSpec(dataset="missing.jsonl", script="nowhere.py").dataset == "missing.jsonl"


def test_option_fields_are_every_runspec_field_once():
    from gaudi_nb.spec import option_fields

    fields = option_fields()
    assert [f.name for f in fields] == list(RunSpec.model_fields)
    by_name = {f.name: f for f in fields}
    assert by_name["max_steps"].flag == "--max-steps" and by_name["max_steps"].type is int
    assert by_name["precision"].choices == ("auto", "bf16", "fp32")
    assert by_name["lazy_mode"].type is bool and by_name["budget_usd"].type is float


def test_warmup_never_swallows_every_step():
    assert RunSpec(max_steps=3, warmup_steps=10).warmup_steps == 2


def test_a_yaml_alias_bomb_in_a_spec_is_a_short_error_at_once(tmp_path):
    """Nested aliases ("billion laughs"): yaml.safe_load shares them cheaply, but every later use of the value
    (a check, the error that prints what was given) expanded it."""
    import time

    from pydantic import ValidationError

    from gaudi_nb.api import load_spec_file
    from gaudi_nb.errors import SpecError
    from gaudi_nb.spec import RunSpec, describe_validation_error

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "spec.yaml"
    path.write_text("\n".join(levels) + "\ndevices: *a9\n")
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert time.monotonic() - started < 2 and len(str(info.value)) < 200 and "aliases" in str(info.value)
    wide = [[list(range(100))] * 100] * 100  # what a bomb makes: shared lists, a million items
    with pytest.raises(ValidationError) as refused:
        RunSpec.model_validate({"devices": wide})
    said = describe_validation_error(refused.value)
    assert said.startswith("devices: input should be a valid integer (got [[[...], [...],") and len(said) < 300, said[:400]
