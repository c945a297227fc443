from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nmtkit.optim import OPTIMIZERS, AdamConfig, AdamOptimizer, SgdConfig, SgdOptimizer


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=generator)),
        torch.nn.Parameter(torch.randn(3, generator=generator)),
    ]


def run_steps(optimizer, params: list[torch.nn.Parameter], steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()


def test_registry_lists_and_builds_optimizers():
    assert {"adam", "sgd"} <= set(OPTIMIZERS.names())
    optimizer = OPTIMIZERS.build(AdamConfig(_name="adam", lr=1e-3), make_params())
    assert isinstance(optimizer, AdamOptimizer)
    assert optimizer.get_lr() == pytest.approx(1e-3)
    assert isinstance(OPTIMIZERS.build(SgdConfig(_name="sgd"), make_params()), SgdOptimizer)


def test_adam_steps_like_torch_adamw():
    config = AdamConfig(lr=1e-2, betas=[0.9, 0.98], eps=1e-6, weight_decay=0.01)
    ours_params, torch_params = make_params(), make_params()
    ours = AdamOptimizer(config, iter(ours_params))  # a generator, as model.parameters() is
    reference = torch.optim.AdamW(
        torch_params, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01
    )
    run_steps(ours, ours_params)
    run_steps(reference, torch_params)
    for mine, theirs in zip(ours_params, torch_params):
        torch.testing.assert_close(mine, theirs)
    assert not torch.equal(ours_params[0], make_params()[0])


def test_adam_weight_decay_is_decoupled_from_the_gradient():
    params = make_params()
    initial = [p.detach().clone() for p in params]
    optimizer = AdamOptimizer(AdamConfig(lr=0.1, weight_decay=0.5), params)
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    # With a zero gradient Adam's own update is 0, so only decay remains: p * (1 - lr * wd).
    # Coupled (L2) decay would instead feed wd * p through Adam's normalisation, moving every
    # weight by about lr regardless of its size.
    for param, before in zip(params, initial):
        torch.testing.assert_close(param.detach(), before * (1 - 0.1 * 0.5))


def test_adam_accepts_param_groups_and_state_round_trips():
    params = make_params()
    groups = [{"params": iter(params[:1])}, {"params": iter(params[1:]), "weight_decay": 0.0}]
    optimizer = AdamOptimizer(AdamConfig(weight_decay=0.1), groups)
    run_steps(optimizer, params, steps=1)
    copy = AdamOptimizer(
        AdamConfig(weight_decay=0.1), [{"params": params[:1]}, {"params": params[1:]}]
    )
    copy.load_state_dict(optimizer.state_dict())
    assert copy.param_groups[1]["weight_decay"] == 0.0
    assert copy.optimizer.state[params[0]]["step"] == 1


def test_adam_fuses_on_cpu_by_default_and_can_be_told_not_to():
    assert AdamOptimizer(AdamConfig(), make_params()).optimizer.defaults["fused"]
    assert not AdamOptimizer(AdamConfig(fused=False), make_params()).optimizer.defaults["fused"]


def test_adam_config_validation():
    assert AdamConfig().validate() == []
    errors = AdamConfig(lr=0.0, betas=[0.9], eps=0.0, weight_decay=-1.0).validate()
    assert [e.split("=")[0] for e in errors] == ["lr", "betas", "eps", "weight_decay"]
    assert AdamConfig(betas=[0.9, 1.0]).validate()[0].startswith("betas=[0.9, 1.0]")


def test_adam_config_betas_override_through_omegaconf():
    node = OmegaConf.structured(AdamConfig)
    node.betas = [0.9, 0.98]
    config = OmegaConf.to_object(node)
    assert config.betas == [0.9, 0.98] and AdamConfig().betas == [0.9, 0.999]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_like_torch_sgd(nesterov):
    config = SgdConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov)
    ours_params, torch_params = make_params(), make_params()
    ours = SgdOptimizer(config, ours_params)
    reference = torch.optim.SGD(
        torch_params, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov
    )
    run_steps(ours, ours_params)
    run_steps(reference, torch_params)
    for mine, theirs in zip(ours_params, torch_params):
        torch.testing.assert_close(mine, theirs)


def test_set_lr_reaches_every_group_and_zero_grad_clears():
    params = make_params()
    optimizer = SgdOptimizer(SgdConfig(), [{"params": params[:1]}, {"params": params[1:]}])
    optimizer.set_lr(0.25)
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.25]
    run_steps(optimizer, params, steps=1)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_sgd_config_validation():
    assert SgdConfig(momentum=0.9, nesterov=True).validate() == []
    assert SgdConfig(nesterov=True).validate() == [
        "nesterov=true: needs momentum > 0 (e.g. optimizer.momentum=0.9)"
    ]
    assert len(SgdConfig(lr=-1.0, momentum=1.5, weight_decay=-0.1).validate()) == 3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_adam_fuses_on_cuda_and_matches_cpu():
    cpu_params = make_params()
    cuda_params = [torch.nn.Parameter(p.detach().cuda()) for p in make_params()]
    config = AdamConfig(lr=1e-2, weight_decay=0.01)
    cuda_optimizer = AdamOptimizer(config, cuda_params)
    assert cuda_optimizer.optimizer.defaults["fused"]
    cpu_optimizer = AdamOptimizer(config, cpu_params)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        for cpu_param, cuda_param in zip(cpu_params, cuda_params):
            grad = torch.randn(cpu_param.shape, generator=generator)
            cpu_param.grad, cuda_param.grad = grad, grad.cuda()
        cpu_optimizer.step()
        cuda_optimizer.step()
    for cpu_param, cuda_param in zip(cpu_params, cuda_params):
        torch.testing.assert_close(cuda_param.detach().cpu(), cpu_param.detach())
