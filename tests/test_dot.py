"""DOT (`optim.name: dot`): the two momenta against the update written out, known reductions to SGD,
and the trainer's two backward passes."""

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.engine.dot import DistillationOrientedSGD
from kdforge.errors import ConfigError


def direct_dot(p0, grads, lr, m, delta, wd):
    """One scalar parameter per role, updated by hand: grads[step][role] = (task, kd), None for absent."""
    values, buffers = dict(p0), {}
    for step in grads:
        for role, (g_t, g_k) in step.items():
            p = values[role]
            both = g_t is not None and g_k is not None
            update = 0.0
            for key, g, mom in (("t", g_t, m - delta), ("k", g_k, m + delta)):
                if g is None:
                    continue
                if key == "t" or not both:
                    g = g + wd * p
                mom = mom if both else m
                b = buffers.get((role, key))
                buffers[(role, key)] = b = g if b is None else mom * b + g
                update += b
            values[role] = p - lr * update
    return values


def test_dot_equals_its_update_written_out():
    roles = {"both": 0.5, "task_only": -1.0, "kd_only": 2.0}
    params = {r: torch.tensor([v], dtype=torch.float64, requires_grad=True) for r, v in roles.items()}
    opt = DistillationOrientedSGD(params.values(), lr=0.1, momentum=0.9, delta=0.075, weight_decay=0.01)
    grads = [{"both": (0.3, -0.7), "task_only": (1.0, None), "kd_only": (None, 0.4)},
             {"both": (-0.2, 0.5), "task_only": (0.5, None), "kd_only": (None, -0.1)},
             {"both": (0.1, 0.2), "task_only": (None, 0.3), "kd_only": (None, 0.6)}]  # a role may change
    for step in grads:
        for role, (_, g_k) in step.items():
            params[role].grad = None if g_k is None else torch.tensor([g_k], dtype=torch.float64)
        opt.keep_distillation_grads()
        opt.zero_grad(set_to_none=True)
        for role, (g_t, _) in step.items():
            params[role].grad = None if g_t is None else torch.tensor([g_t], dtype=torch.float64)
        opt.step()
    want = direct_dot(roles, grads, 0.1, 0.9, 0.075, 0.01)
    for role, p in params.items():
        assert p.item() == pytest.approx(want[role], rel=1e-12), role


@pytest.mark.parametrize("momentum, delta", [(0.9, 0.2), (0.05, 0.075)])
def test_dot_refuses_momenta_outside_zero_to_one(momentum, delta):
    """Used directly (not through the config), the optimizer checks both momenta itself."""
    with pytest.raises(ValueError, match="momentum \\+- delta must lie in \\[0, 1\\)"):
        DistillationOrientedSGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=momentum, delta=delta)


def test_dot_at_delta_zero_is_sgd_on_the_summed_gradient():
    """Equal momenta: the two buffers add up to SGD's buffer of the summed gradient (weight decay once)."""
    torch.manual_seed(0)
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    dot = DistillationOrientedSGD([a], lr=0.05, momentum=0.9, delta=0.0, weight_decay=5e-4)
    sgd = torch.optim.SGD([b], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(4):
        g_t, g_k = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
        a.grad = g_k.clone()
        dot.keep_distillation_grads()
        a.grad = g_t.clone()
        dot.step()
        b.grad = g_t + g_k
        sgd.step()
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A briefly trained resnet8 teacher (DOT's tests need its features, not its accuracy)."""
    out = tmp_path_factory.mktemp("dot_teacher")
    run(out, "teacher", {"name": "sgd"}, {"ce": 1.0}, max_steps=3, teacher=None)
    return out / "teacher"


def run(tmp_path, name, optim, losses=None, max_steps=4, teacher=None):
    from kdforge.engine import train_from_config

    cfg = config_from_dict({
        "name": name, "output_dir": str(tmp_path), "seed": 3, "data": {"batch_size": 32, "options": {"image_size": 16}},
        "student": {"model": "resnet8"}, **({"teacher": {"checkpoint": str(teacher)}} if teacher else {}),
        "losses": losses or {"ce": 1.0, "fitnet": 1.0},
        "optim": {"lr": 0.05, **optim}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"max_steps": max_steps, "progress": False, "tensorboard": False, "precision": "fp32"}})
    train_from_config(cfg)
    return torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)


def test_trainer_splits_the_step_into_distillation_and_task_gradients(tmp_path, teacher_dir):
    """One step of the trainer's two backward passes: the two buffers (each the first gradient) add up to
    SGD's buffer of the total loss, and give SGD's weights. FitNet's regressor gets only the distillation
    gradient, the classifier only the task's. (Later steps are compared in the optimizer tests above: on
    this tiny run a 1e-6 change in one step's gradient grows to 1e-3 in the next, measured, so runs of the
    two paths are not comparable after the first step.)"""
    sgd = run(tmp_path, "sgd", {"name": "sgd"}, max_steps=1, teacher=teacher_dir)
    dot = run(tmp_path, "dot", {"name": "dot"}, max_steps=1, teacher=teacher_dir)
    for key, value in sgd["student"].items():
        if value.is_floating_point():
            assert torch.allclose(dot["student"][key], value, rtol=1e-4, atol=1e-6), key
    kinds = []
    for index, state in dot["optimizer"]["state"].items():
        total = state.get("momentum_buffer", 0) + state.get("momentum_kd_buffer", 0)
        want = sgd["optimizer"]["state"][index]["momentum_buffer"]
        assert (total - want).norm() <= 1e-4 * want.norm() + 1e-7, index  # summed in another order: rounding
        kinds.append(tuple(sorted(state)))
    assert set(kinds) == {("momentum_buffer", "momentum_kd_buffer"), ("momentum_buffer",), ("momentum_kd_buffer",)}


@pytest.mark.parametrize("optim, losses, match", [
    ({"name": "dot"}, {"ce": 1.0}, "needs a `ce` loss and at least one distillation loss"),
    ({"name": "dot"}, {"kd": 1.0}, "needs a `ce` loss"),
    ({"name": "dot", "dot_delta": 0.2}, None, "optim.dot_delta"),
    ({"name": "dot", "nesterov": True}, None, "optim.nesterov"),
])
def test_dot_refuses_runs_it_cannot_train(tmp_path, teacher_dir, optim, losses, match):
    with pytest.raises(ConfigError, match=match):
        run(tmp_path, "bad", optim, losses, max_steps=1, teacher=teacher_dir)
