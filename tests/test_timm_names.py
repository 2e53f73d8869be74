"""The timm model names shipped with the package (``training/timm_names.txt``, read by the API
without importing timm) are exactly the installed timm's, and the name check built on them
answers as timm itself would: same names accepted, same suggestions for a typo."""

import difflib
from importlib import resources

import pytest
import timm
from timm.models import get_deprecated_models

from training import timm_names
from training.errors import SpecError
from training.model.timm_build import check_name as build_check_name

STALE = f"training/timm_names.txt is not the installed timm's: run `{timm_names.REGENERATE}`"


def test_the_shipped_list_is_the_installed_timms():
    assert timm_names.list_models() == sorted(timm.list_models()), STALE
    shipped = resources.files("training").joinpath(timm_names.FILE_NAME)
    assert shipped.read_text(encoding="utf-8") == timm_names.render(), STALE
    assert timm_names.main(["--check"]) == 0


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "vit_tiny_patch16_224.augreg_in21k",  # a pretrained tag is ignored, as timm does
        "resnet18.no_such_tag",
        "resnet19",
        "RESNET18",
        "resnet18 ",
        "",
        ".",
        "hf-hub:timm/resnet18.a1_in1k",
        "hf_hub:timm/resnet18",
    ],
)
def test_a_name_is_accepted_exactly_when_timm_accepts_it(name):
    assert timm_names.is_model(name) == timm.is_model(name)


def test_every_listed_and_deprecated_name_is_accepted():
    deprecated = list(get_deprecated_models())
    assert deprecated, "timm lists deprecated names; the file should hold them too"
    for name in [*timm.list_models(), *deprecated]:
        assert timm_names.is_model(name), name


@pytest.mark.parametrize(
    "name", ["resnet19", "vit_tiny_patch16", "convnext_tiny_in22ft", "resnet19.a1_in1k", "zzzz"]
)
def test_an_unknown_name_gets_the_suggestions_timm_would_give(name):
    arch = name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}" if close else "see timm.list_models()"
    for check in (timm_names.check_name, build_check_name):
        with pytest.raises(SpecError) as err:
            check(name)
        assert str(err.value) == f"unknown timm model {name!r}; {hint}"
