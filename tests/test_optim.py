"""Parameter groups and iteration-based LR schedules."""

import math

import pytest
import torch
from torch import nn

from dasuite.config.schema import OptimConfig, ScheduleConfig
from dasuite.engine.optim import build_optimizer
from dasuite.schedule import build_scheduler, lr_factor


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4))
        self.decode_head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_param_groups_head_multiplier_and_no_decay_on_norms():
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=1e-3, weight_decay=0.01, head_lr_mult=10, norm_weight_decay=0.0),
                          head_prefixes=("decode_head",))
    groups = {g["group"]: g for g in opt.param_groups}
    assert set(groups) == {"body", "body_norm", "head"}
    assert {id(p) for p in net.decode_head[1].parameters()} <= {id(p) for p in groups["head"]["params"]}
    assert groups["head"]["lr"] == pytest.approx(1e-2) and groups["body"]["lr"] == pytest.approx(1e-3)
    assert groups["body_norm"]["weight_decay"] == 0.0 and groups["body"]["weight_decay"] == 0.01
    ids = lambda g: {id(p) for p in g["params"]}
    assert ids(groups["body_norm"]) == {id(p) for m in (net.backbone[1], net.backbone[2]) for p in m.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_norm_decay_null_keeps_one_decay():
    opt = build_optimizer(Net(), OptimConfig(name="sgd", lr=0.1, weight_decay=1e-4, norm_weight_decay=None))
    assert [g["group"] for g in opt.param_groups] == ["body"]
    assert isinstance(opt, torch.optim.SGD)


def test_poly_with_warmup_matches_formula():
    cfg = ScheduleConfig(name="poly", power=1.0, warmup_iters=10, warmup_ratio=1e-6, min_lr=0.0)
    f = lr_factor(cfg, max_iters=100, base_lr=6e-5)
    assert f(0) == pytest.approx(1e-6)
    assert f(5) == pytest.approx((1 - 0.5 * (1 - 1e-6)) * (1 - 0.05))
    assert f(10) == pytest.approx(0.9)
    assert f(100) == pytest.approx(0.0)
    g = lr_factor(ScheduleConfig(name="poly", power=0.9, min_lr=1e-4), 100, 1e-2)
    assert g(50) == pytest.approx((1 - 1e-2) * 0.5 ** 0.9 + 1e-2)


def test_step_and_constant_schedules_on_optimizer():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    opt.param_groups[0]["initial_lr"] = 1.0
    sched = build_scheduler(opt, ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1), max_iters=6)
    lrs = [l[0] for l in _lrs(sched, opt, 6)]
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    opt2 = torch.optim.SGD(net.parameters(), lr=0.5)
    opt2.param_groups[0]["initial_lr"] = 0.5
    sched2 = build_scheduler(opt2, ScheduleConfig(name="constant"), max_iters=3)
    assert [l[0] for l in _lrs(sched2, opt2, 3)] == pytest.approx([0.5] * 3)


def test_scheduler_state_round_trip():
    net = nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1.0)
    opt.param_groups[0]["initial_lr"] = 1.0
    cfg = ScheduleConfig(name="poly", warmup_iters=3)
    sched = build_scheduler(opt, cfg, 10)
    _lrs(sched, opt, 4)
    opt_b = torch.optim.AdamW(net.parameters(), lr=1.0)
    opt_b.param_groups[0]["initial_lr"] = 1.0
    sched_b = build_scheduler(opt_b, cfg, 10)
    sched_b.load_state_dict(sched.state_dict())
    opt_b.load_state_dict(opt.state_dict())
    assert math.isclose(_lrs(sched_b, opt_b, 2)[1][0], _lrs(sched, opt, 2)[1][0])
    assert sched_b.last_epoch == sched.last_epoch == 6


def test_linear_decay_is_constant_then_linear_to_zero():
    """CycleGAN's schedule: constant for the first half, then linearly to 0 at max_iters."""
    f = lr_factor(ScheduleConfig(name="linear", decay_start=0.5), max_iters=100, base_lr=2e-4)
    assert [f(i) for i in (0, 25, 50)] == pytest.approx([1.0, 1.0, 1.0])
    assert f(75) == pytest.approx(0.5)
    assert f(90) == pytest.approx(0.2)
    assert f(100) == pytest.approx(0.0)
    g = lr_factor(ScheduleConfig(name="linear", decay_start=0.0), max_iters=10, base_lr=1.0)
    assert g(5) == pytest.approx(0.5)
