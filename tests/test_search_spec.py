"""Search spec validation: which field is wrong and what is allowed."""

import pytest
from pydantic import ValidationError

from search.spec import SearchSpec
from service.cli.search import load_spec, spec_error
from training.errors import HSSLError


def errors_of(data) -> str:
    with pytest.raises(ValidationError) as info:
        SearchSpec.model_validate(data)
    return str(spec_error(info.value))


def test_defaults_are_valid_and_cover_every_family():
    spec = SearchSpec()
    assert [h.family for h in spec.space.candidates()] == [
        "convnext",
        "resnet",
        "transformer",
        "mlp",
        "pool",
    ]
    assert spec.trial_config(tuple(spec.space.candidates()[:1]), 3).seed == 3


def test_grid_collapses_knobs_a_family_ignores():
    spec = SearchSpec.model_validate(
        {"space": {"families": ["convnext", "mlp"], "kernels": [3, 7]}}
    )
    labels = [h.label() for h in spec.space.candidates()]
    assert labels == ["convnext-d2-k3-nores", "convnext-d2-k7-nores", "mlp-d2-nores"]


def test_each_bad_field_is_named_with_what_is_allowed():
    message = errors_of(
        {
            "base": {"name": "vit_tny_patch16_224"},
            "budget": {"epochs": 0},
            "space": {"families": ["convnxt"]},
            "strategy": "grid",
        }
    )
    assert "base.name: unknown timm model 'vit_tny_patch16_224'; did you mean" in message
    assert "budget.epochs: Input should be greater than or equal to 1" in message
    assert "space.families.0: Input should be 'convnext'" in message
    assert (
        "strategy: Input should be 'joint', 'independent', 'optuna', 'calibrate' or 'staged'"
        in message
    )


def test_explicit_heads_are_parsed_and_bad_ones_named():
    spec = SearchSpec.model_validate({"space": {"heads": ["convnext:depth=3", {"family": "mlp"}]}})
    assert [h.family for h in spec.space.candidates()] == ["convnext", "mlp"]
    assert "unknown head family 'cnn'" in errors_of({"space": {"heads": ["cnn:depth=1"]}})


def test_joint_strategy_refuses_probe_objectives():
    assert "objectives must be among" in errors_of({"strategy": "joint", "objectives": ["knn"]})
    ok = SearchSpec.model_validate({"strategy": "independent", "objectives": ["knn", "d_kl"]})
    assert ok.objectives == ["knn", "d_kl"]


def test_trial_overrides_are_checked_against_the_trial_config():
    assert "unknown trial config field(s) ['learning_rate']" in errors_of(
        {"trial_overrides": {"learning_rate": 1}}
    )
    assert "may not set ['epochs']" in errors_of({"trial_overrides": {"epochs": 3}})


def test_names_unknown_fields_and_unsafe_study_names():
    assert "budget.epoch: Extra inputs are not permitted" in errors_of({"budget": {"epoch": 2}})
    assert "name: name may hold letters" in errors_of({"name": "../etc"})


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("strategy: independent\nbudget: {epochs: 3, seeds: 2}\n")
    spec = load_spec(path, {"budget.epochs": 5, "data": None, "space.heads": ["mlp"]})
    assert spec.strategy == "independent" and spec.budget.epochs == 5 and spec.budget.seeds == 2
    assert [h.family for h in spec.space.candidates()] == ["mlp"]
    with pytest.raises(HSSLError, match=r"invalid search spec: budget\.seeds"):
        load_spec(path, {"budget.seeds": 0})


def test_wrong_types_are_named_not_crashes():
    bad_head = errors_of({"space": {"heads": [{"family": "convnext", "depth": "x"}]}})
    assert "HeadSpec field depth must be int, got 'x'" in bad_head
    assert "trial config field lr must be float, got 'abc'" in errors_of(
        {"trial_overrides": {"lr": "abc"}}
    )


def test_proxy_recipe_is_the_search_default_and_faithful_opts_out():
    from training.recipe import PROXY_RECIPE, TrialConfig

    proxy = SearchSpec().trial_config((), 0)
    assert all(getattr(proxy, k) == v for k, v in PROXY_RECIPE.items())
    assert proxy.proj_bn and proxy.koleo_weight > 0
    faithful = SearchSpec(recipe="faithful").trial_config((), 0)
    defaults = TrialConfig()
    assert all(getattr(faithful, k) == getattr(defaults, k) for k in PROXY_RECIPE)
    # trial_overrides win over the recipe; the full pre-training config never takes it
    tuned = SearchSpec(trial_overrides={"koleo_weight": 0.0}).trial_config((), 0)
    assert tuned.koleo_weight == 0.0 and tuned.proj_bn
    assert not TrialConfig.paper(proxy.base, ()).proj_bn
    assert TrialConfig.proxy(lr=1e-3).lr == 1e-3 and TrialConfig.proxy().proj_bn
