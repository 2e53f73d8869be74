"""The GPU path's switches, coherent with the CPU's and built here (issue 24 item 3): fused
AdamW on CUDA for both engines, torch.compile as an option whose compilation is logged."""

from __future__ import annotations

import pytest
import torch

from training.finetune.config import FinetuneConfig
from training.finetune.parts import make_optimizer
from training.loop.optim import param_groups
from training.loop.session import build_session
from training.recipe import TrialConfig
from training.runtime.device import Runtime, optimizer_options
from training.specs import BaseSpec, HeadSpec

CUDA = Runtime(torch.device("cuda"), bf16=True)
CPU = Runtime(torch.device("cpu"), bf16=False)


def _config(**kw) -> TrialConfig:
    return TrialConfig.proxy(
        base=BaseSpec(img_size=16, patch_size=4, depth=1, width=32),
        heads=(HeadSpec(family="mlp", depth=1),),
        data="synthetic",
        data_limit=64,
        epochs=1,
        batch_size=16,
        out_dim=32,
        proj_hidden=32,
        proj_bottleneck=16,
        linear_probe=False,
        device="cpu",
        **kw,
    )


def test_adamw_is_fused_on_cuda_only_and_both_engines_can_build_it():
    assert optimizer_options(CUDA) == {"fused": True} and optimizer_options(CPU) == {}
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    # the CUDA options build an optimizer here too (fused AdamW also runs on CPU tensors)
    pretraining = torch.optim.AdamW(param_groups(net), lr=0.0, **optimizer_options(CUDA))
    assert pretraining.defaults["fused"] is True
    finetune = make_optimizer(net, FinetuneConfig(), 1e-3, **optimizer_options(CUDA))
    assert finetune.defaults["fused"] is True
    assert not torch.optim.AdamW(net.parameters(), **optimizer_options(CPU)).defaults["fused"]


def test_compile_is_an_option_that_keeps_the_checkpoint_keys():
    plain = build_session(_config(), None)
    compiled = build_session(_config(compile=True), None)
    for net in (compiled.network, compiled.teacher):
        assert net._compiled_call_impl is not None  # nn.Module.compile: forward compiled
    assert plain.network._compiled_call_impl is None
    assert compiled.network.state_dict().keys() == plain.network.state_dict().keys()


@pytest.mark.slow
def test_a_compiled_run_trains_and_logs_its_compilation(tmp_path):
    from training.loop.train import run_trial
    from training.runtime import runlog

    result = run_trial(_config(compile=True), output_dir=tmp_path)
    assert result.status == "completed", result.reason
    line = next(x for x in runlog.read(tmp_path / runlog.FILENAME) if x["epoch"] == 1)
    assert line["phase_s"]["compile"] > 0  # the first step: compilation and one step
