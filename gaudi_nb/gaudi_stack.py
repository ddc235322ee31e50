"""The Gaudi software stack as facts, in one place: which trainer is supported, which card generation
the installed software still supports, and first-generation Gaudi's pin to Gaudi software 1.21. Doctor,
preflight and the local target (the pin, before a run), the ranks, the AWS provider and the docs read them
from here. Pure data and small pure functions: it imports nothing from gaudi_nb."""
from __future__ import annotations

import re
from typing import Optional, Tuple

# optimum-habana's PyPI page: "END OF SUPPORT. As of 2026-10-31 … final release is v1.21.2 (Intel Gaudi
# Software 1.24, Transformers 4.55.x). There is no officially recommended replacement."
OPTIMUM_HABANA_PIN = "1.21.2"
OPTIMUM_HABANA_EOS = (
    f"optimum-habana {OPTIMUM_HABANA_PIN} is past end of support (its final release; support ended 2026-10-31, "
    "Gaudi software 1.24, transformers 4.55.x)"
)
# What --trainer transformers (transformers' Trainer with accelerate's native Gaudi support) lacks that
# GaudiTrainer has: GaudiConfig's fused AdamW and fused clip-norm (habana's FusedAdamW, FusedClipNorm),
# and GaudiTrainingArguments' distribution_strategy="fast_ddp" and fp8 minimize_memory, which live in
# optimum-habana's own training arguments and accelerate fork (accelerate 1.10.1 has neither).
GIVEN_UP = "fused AdamW and fused clip-norm, fast_ddp, fp8 minimize_memory"
# The trainer --trainer auto picks on Gaudi: transformers' Trainer detects the HPU natively (accelerate >= 1.5).
SUPPORTED_HPU_TRAINER = "transformers"


def trainer_support(trainer: str) -> str:
    """One line for the run record and doctor: the trainer's support state."""
    if trainer == "optimum-habana":
        return f"{OPTIMUM_HABANA_EOS}; --trainer transformers is supported (without {GIVEN_UP})"
    if trainer == "lightning":
        return "lightning-habana (last release 1.6.0, 2024-06) is untested with Gaudi software 1.24"
    return "supported (transformers' Trainer; Gaudi through accelerate >= 1.5)"


# Card names as hl-smi prints them → generation. Intel's support matrix covers first-generation Gaudi
# (HL-205, AWS dl1.24xlarge) only up to Gaudi software 1.21; from 1.22 on, Gaudi 2 and Gaudi 3 only.
GENERATIONS = (("HL-205", "Gaudi (first generation)"), ("HL-225", "Gaudi 2"), ("HL-325", "Gaudi 3"), ("HL-338", "Gaudi 3"))
FIRST_GEN_LAST_SOFTWARE: Tuple[int, int] = (1, 21)
# The pin, in the words every place a user meets DL1 uses (the catalog, `nodes provision aws`, Terraform, the docs;
# tests/test_infra.py checks they say it alike): DL1 runs on the last stack that supports it, anything newer is refused.
FIRST_GEN_PIN = (
    "first-generation Gaudi (HL-205, AWS dl1.24xlarge) is pinned to Gaudi software 1.21, the last release that supports it: "
    "Intel's support matrix leaves it out from 1.22 on, so gaudi_nb refuses to run on it with anything newer"
)
FIRST_GEN_REFUSED = (
    "out of Intel's support matrix since Gaudi software 1.22, and gaudi_nb pins first-generation Gaudi to 1.21: "
    "use an image with Gaudi software 1.21 (gaudi-nb nodes provision aws --image AMI_ID), or a Gaudi 2 / Gaudi 3 node"
)
# Gaudi software 1.21's pip set. Intel's Support Matrix v1.21.0: PyTorch 2.6.0, DeepSpeed forked from 0.14.4.
# optimum-habana v1.18.1 is the release validated with 1.21 (its tag: "Transformers v4.51.3; Accelerate v1.9.0;
# SynapseAI v1.21"; CURRENTLY_VALIDATED_SYNAPSE_VERSION 1.21.0; setup.py transformers >=4.51,<4.52, accelerate >=1.7);
# its README installs DeepSpeed from HabanaAI/DeepSpeed@1.21.0. The node install picks no packages per stack, so the
# check names them: the image brings PyTorch, the rest is a pip install away.
FIRST_GEN_PIP = (
    "PyTorch 2.6.0 (Intel's build, from the image)",
    "optimum-habana==1.18.1 with transformers>=4.51,<4.52 and accelerate>=1.7 for --trainer optimum-habana "
    "(gaudi_nb's optimum-habana extra pins 1.21.2, validated with 1.24 only)",
    "Intel's DeepSpeed: pip install git+https://github.com/HabanaAI/DeepSpeed.git@1.21.0",
)


def first_gen_stack(card_name: Optional[str], software: Optional[str]) -> Optional[Tuple[bool, str, str]]:
    """The pin on one machine: None for a card that is not first-generation Gaudi; else (ok, what was found, what
    to do). Newer than 1.21 is refused; 1.21 or older goes on, and the line names the pip set that matches 1.21."""
    if not (generation(card_name) or "").startswith("Gaudi (first"):
        return None
    release, card = software_release(software), f"first-generation Gaudi ({str(card_name).strip()})"
    if release is not None and release > FIRST_GEN_LAST_SOFTWARE:
        return False, f"{card} with Gaudi software {software}", FIRST_GEN_REFUSED
    found = f"{card}, Gaudi software release unknown: it must be 1.21 or older" if release is None else f"{card} with Gaudi software {software}, within the pin"
    return True, f"{found}; 1.21's pip set: " + "; ".join(FIRST_GEN_PIP), ""


def first_gen_refusal(card_name: Optional[str], software: Optional[str]) -> Optional[str]:
    """The one line a run on this machine is refused with, or None when it may go on."""
    verdict = first_gen_stack(card_name, software)
    return f"{verdict[1]}: {verdict[2]}" if verdict is not None and not verdict[0] else None


def generation(card_name: Optional[str]) -> Optional[str]:
    """'HL-225' → 'Gaudi 2'; None for a name that is not a Gaudi card's."""
    name = (card_name or "").upper()
    for prefix, label in GENERATIONS:
        if prefix in name:
            return label
    return None


def software_release(version: Optional[str]) -> Optional[Tuple[int, int]]:
    match = re.match(r"\s*v?(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def generation_supported(card_name: Optional[str], software: Optional[str]) -> Optional[bool]:
    """Whether the installed Gaudi software supports this card; None when either is unknown."""
    label, release = generation(card_name), software_release(software)
    if label is None or release is None:
        return None
    if label.startswith("Gaudi (first"):
        return release <= FIRST_GEN_LAST_SOFTWARE
    return True
