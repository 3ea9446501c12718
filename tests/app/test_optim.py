"""pygml.app.optim: the optimisers by name over named parameter groups, and the step schedule."""

import pytest
import torch

from pygml.app.config import load_config
from pygml.app.optim import OPTIMIZERS, StepSchedule, build_optimizer, build_scheduler


def test_schedule_cumulative_and_reset():
    cum = StepSchedule([3, 5], 0.1, True)
    assert [round(cum(e), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    once = StepSchedule([31, 51], 0.1, False)
    assert once(29) == 1 and once(30) == pytest.approx(0.1) and once(60) == pytest.approx(0.1)
    assert StepSchedule([], 0.1, True)(100) == 1


def test_param_groups_keep_their_names_and_lr():
    cfg = load_config(None, ["optim.lr=0.5"])
    groups = [{"name": "a", "params": [torch.nn.Parameter(torch.ones(1))]},
              {"name": "b", "params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.01},
              {"name": "empty", "params": []}]
    opt = build_optimizer(cfg.optim, groups)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("a", 0.5), ("b", 0.01)]
    sched = build_scheduler(opt, load_config(None, ["optim.milestones=[1]"]).optim)
    assert sched.get_last_lr() == pytest.approx([0.05, 0.001])
    assert "lr" not in groups[0], "the caller's groups are left as they were"


def test_scheduler_steps_once_per_epoch():
    cfg = load_config(None, ["optim.lr=1.0", "optim.milestones=[2,3]", "optim.gamma=0.5"])
    opt = build_optimizer(cfg.optim, [{"name": "a", "params": [torch.nn.Parameter(torch.ones(1))]}])
    sched = build_scheduler(opt, cfg.optim)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 0.5, 0.25, 0.25])


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("radam", torch.optim.RAdam), ("sgd", torch.optim.SGD)])
def test_every_optimiser_by_name_with_the_settings(name, cls):
    cfg = load_config(None, [f"optim.name={name}", "optim.lr=0.02", "optim.weight_decay=0.001", "optim.eps=1e-6",
                             "optim.momentum=0.5", "optim.decoupled_weight_decay=true"])
    opt = build_optimizer(cfg.optim, [{"name": "a", "params": [torch.nn.Parameter(torch.ones(2))]}])
    assert type(opt) is cls and set(OPTIMIZERS) == {"adam", "adamw", "radam", "sgd"}
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.02, 0.001)
    if name == "sgd":
        assert group["momentum"] == 0.5
    else:
        assert group["eps"] == 1e-6
    if name == "radam":
        assert group["decoupled_weight_decay"] is True


def test_unknown_optimiser_is_an_error():
    cfg = load_config(None)
    cfg.optim.name = "lbfgs"  # past the config's own check
    with pytest.raises(ValueError, match="unknown optimiser optim.name='lbfgs'; expected one of adam, adamw"):
        build_optimizer(cfg.optim, [{"name": "a", "params": [torch.nn.Parameter(torch.ones(1))]}])
