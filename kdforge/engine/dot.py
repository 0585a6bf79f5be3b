"""DOT: Zhao, Song & Qiu, "DOT: A Distillation-Oriented Trainer", ICCV 2023 (arXiv:2307.08436).

SGD with two momenta: the task loss's gradient (CE) is accumulated with momentum mu - delta, the
distillation losses' gradient with mu + delta, so the distillation direction dominates the update.
A parameter only one of the two losses reaches (a method's adapter, say) uses mu for its one buffer,
and weight decay is added once, to the task gradient where both exist (as the authors' code).
`optim.name: dot` selects it for any method; the trainer then runs two backward passes a step.
"""

from __future__ import annotations

import functools
import operator

import torch

from kdforge.errors import ConfigError


class DistillationOrientedSGD(torch.optim.Optimizer):
    """SGD whose task and distillation gradients keep separate momentum buffers (see the module docstring).

    Per step: backward the distillation losses, `keep_distillation_grads()`, zero the gradients, backward the
    task loss, `step()`. Buffers start at the first gradient (as torch's SGD); the state is the usual
    optimizer state dict (`momentum_buffer`, `momentum_kd_buffer` per parameter), so checkpoints resume it.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, delta: float = 0.075, weight_decay: float = 0.0):
        if not (0.0 <= momentum - delta and momentum + delta < 1.0):
            raise ValueError(f"dot: momentum +- delta must lie in [0, 1), got {momentum} +- {delta}")
        super().__init__(params, dict(lr=lr, momentum_task=momentum - delta, momentum_kd=momentum + delta,
                                      weight_decay=weight_decay))
        self._kd_grads: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def keep_distillation_grads(self) -> None:
        """Take the gradients now in `.grad` as the distillation gradients of this step."""
        self._kd_grads = {p: p.grad for group in self.param_groups for p in group["params"] if p.grad is not None}

    @staticmethod
    def _accumulate(state: dict, key: str, grad: torch.Tensor, momentum: float) -> torch.Tensor:
        buf = state.get(key)
        if buf is None:
            state[key] = buf = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad)
        return buf

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            m_task, m_kd, decay, lr = group["momentum_task"], group["momentum_kd"], group["weight_decay"], group["lr"]
            m_one = (m_task + m_kd) / 2
            for p in group["params"]:
                g_task, g_kd = p.grad, self._kd_grads.get(p)
                if g_task is None and g_kd is None:
                    continue
                both = g_task is not None and g_kd is not None
                state, update = self.state[p], None
                if g_task is not None:
                    update = self._accumulate(state, "momentum_buffer", g_task.add(p, alpha=decay) if decay else g_task,
                                              m_task if both else m_one)
                if g_kd is not None:
                    grad = g_kd if both or not decay else g_kd.add(p, alpha=decay)
                    buf = self._accumulate(state, "momentum_kd_buffer", grad, m_kd if both else m_one)
                    update = buf if update is None else update + buf
                p.add_(update, alpha=-lr)
        self._kd_grads = {}
        return loss


def dot_task_keys(losses, precision) -> set[str]:
    """The keys of the losses DOT treats as the task (the `ce` losses); errors for a run DOT cannot train."""
    where = "optim.name: dot"
    if precision.name == "fp16":
        raise ConfigError(f"{where} does not support fp16 loss scaling (as its authors' code); use "
                          f"train.precision: bf16 or fp32")
    active = {key for key, weight in losses.weights.items() if weight != 0}
    task = {key for key in active if losses.methods[key].name == "ce"}
    if not task or not active - task:
        raise ConfigError(f"{where} needs a `ce` loss and at least one distillation loss of non-zero weight "
                          f"(losses: {', '.join(sorted(active)) or 'none'})")
    return task


def dot_update(optimizer: DistillationOrientedSGD, loss_values: dict[str, torch.Tensor], task_keys: set[str]) -> None:
    """DOT's step: the distillation losses' gradient, kept; then the task losses' gradient; one update."""
    is_task = [key.split("/", 1)[0] in task_keys for key in loss_values]
    distill = functools.reduce(operator.add, [v for v, t in zip(loss_values.values(), is_task) if not t])
    task = functools.reduce(operator.add, [v for v, t in zip(loss_values.values(), is_task) if t])
    distill.backward(retain_graph=True)
    optimizer.keep_distillation_grads()
    optimizer.zero_grad(set_to_none=True)
    task.backward()
    optimizer.step()
