"""CoreConfig and friends: paper defaults, validation names the field, frozen."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from divreward.core import (
    AdvantageConfig,
    CoreConfig,
    DiverseGRPOConfig,
    DRIFTConfig,
    NoisePromptConfig,
    SubsetConfig,
)


def test_paper_defaults() -> None:
    d = CoreConfig.dump_defaults()
    assert d["advantage"] == {"eps": 1e-6}
    dg = d["diversegrpo"]
    assert dg["beta"] == 0.7
    assert dg["sigma_mode"] == "nn_median"
    assert dg["k_mode"] == "eigengap"
    assert dg["k_max"] == 8
    assert dg["sigma_floor"] == 1e-6
    assert dg["solver"] == "auto" and dg["approx_min_n"] == 512
    assert d["drift"] == {
        "lam": 0.5,
        "gamma": 1.0,
        "num_steps": 50,
        "sigma_clip": 1.0,
        "decoupled": True,
    }
    assert d["noise_prompt"] == {
        "s": 0.05,
        "tau1": 0.4,
        "tau2": 1.0,
        "psi": 1.0,
        "training_only": True,
    }
    assert d["subset"] == {"strategy": "concentrated", "pool_factor": 2}
    assert d["recall_k"] == 10


def test_every_field_is_documented() -> None:
    for model in (
        AdvantageConfig,
        DiverseGRPOConfig,
        DRIFTConfig,
        SubsetConfig,
        NoisePromptConfig,
    ):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: DiverseGRPOConfig(sigma_mode="fixed"), "sigma"),
        (lambda: DiverseGRPOConfig(k_mode="fixed"), "k"),
        (lambda: DiverseGRPOConfig(beta=-0.1), "beta"),
        (lambda: DiverseGRPOConfig(sigma_mode="median"), "sigma_mode"),
        (lambda: DiverseGRPOConfig(k_max=0), "k_max"),
        (lambda: DiverseGRPOConfig(sigma=0.0, sigma_mode="fixed"), "sigma"),
        (lambda: DRIFTConfig(gamma=1.5), "gamma"),
        (lambda: DRIFTConfig(sigma_clip=0.0), "sigma_clip"),
        (lambda: AdvantageConfig(eps=-1.0), "eps"),
        (lambda: NoisePromptConfig(tau1=0.9, tau2=0.5), "tau1"),
        (lambda: NoisePromptConfig(psi=2.0), "psi"),
        (lambda: CoreConfig(recall_k=0), "recall_k"),
        (lambda: SubsetConfig(strategy="random"), "strategy"),
    ],
)
def test_validation_error_names_field(factory, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        factory()
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="betta"):
        DiverseGRPOConfig(betta=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="diversgrpo"):
        CoreConfig.model_validate({"diversgrpo": {}})


def test_frozen() -> None:
    cfg = DiverseGRPOConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.beta = 1.0  # type: ignore[misc]


def test_fixed_modes_accept_values_and_nested_round_trip() -> None:
    cfg = CoreConfig(
        diversegrpo=DiverseGRPOConfig(sigma_mode="fixed", sigma=0.2, k_mode="fixed", k=3),
        drift=DRIFTConfig(decoupled=False),
    )
    again = CoreConfig.model_validate(cfg.to_dict())
    assert again == cfg
    assert again.diversegrpo.sigma == 0.2 and again.diversegrpo.k == 3
