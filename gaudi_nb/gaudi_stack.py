"""The Gaudi software stack as facts, in one place: which trainer is supported, which card generation
the installed software still supports. Doctor, the ranks, the AWS provider and the docs read them
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
FIRST_GEN_NOTE = (
    "first-generation Gaudi (HL-205, AWS dl1.24xlarge) is out of Intel's support matrix from Gaudi software 1.22 on "
    "(this project targets 1.24): use Gaudi software 1.21 or older on it, or a Gaudi 2 / Gaudi 3 node"
)


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
