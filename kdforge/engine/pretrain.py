"""Stages some methods need before training (AB's initialisation, FT's paraphraser).

A method declares `pretrain_epochs > 0`, a `pretrain_loss` and the parameters the stage
trains; it then adds a stage hook to the loop (`Method.loop_hooks`, `engine/hooks/pretrain.py`),
which runs those epochs here through the same forward (taps, autocast, loader) with a constant
learning rate, before the first training step. Its records go to the run log with kind 'pretrain'.
"""

from __future__ import annotations

import signal

import torch

from kdforge.engine.interrupts import RunInterrupted
from kdforge.engine.optim import build_optimizer

#: data-order epochs of pre-training stages are offset so they never repeat a training epoch's
PRETRAIN_EPOCH_OFFSET = 1_000_000


def run_pretrain_stage(key, method, student, forward, loader, optim_config, precision, dist, logger,
                       stop_requested=lambda: None) -> None:
    """Run the stage of the loss `key`'s `method`, training `student`'s and the method's parameters the
    stage names. `forward(images, labels, indices)` is the run's forward (a `StepOutputs`), `loader` its
    training loader; `stop_requested()` is asked after each step: a signal number stops the stage there
    with `RunInterrupted` (a stage is not checkpointed; the run starts again on --resume)."""
    params = [p for p in method.pretrain_parameters(student) if p.requires_grad]
    optimizer = build_optimizer(params, optim_config)
    scaler = precision.grad_scaler()
    train_only_what_is_trained(student, params)
    for epoch in range(method.pretrain_epochs):
        loader.set_epoch(PRETRAIN_EPOCH_OFFSET + epoch)
        total = torch.zeros((), device=precision.device)
        steps = 0
        for images, labels, indices in loader:
            with precision.autocast():
                loss = method.pretrain_loss(forward(images, labels, indices).for_method(key))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            dist.average_gradients(params)  # not under DDP: the ranks average here
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach().float()
            steps += 1
            signum = stop_requested()
            if signum is not None:
                raise RunInterrupted(signum, f"{signal.Signals(signum).name} received in {key}'s pre-training "
                                             f"stage (epoch {epoch + 1} of {method.pretrain_epochs}); a stage "
                                             f"is not checkpointed: --resume starts the run again")
        mean = dist.all_reduce_sum(total / max(steps, 1)) / dist.world_size
        logger.log("pretrain", {"method": key, "epoch": epoch + 1, "loss": mean.item(),
                                "step": 0})  # step 0: kept when a resumed run truncates its log
    student.train()


def train_only_what_is_trained(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
    """Train mode for the modules owning `params`, eval mode elsewhere: BatchNorm statistics of
    layers a stage does not train stay as they are."""
    trained = {id(p) for p in params}
    model.eval()
    for module in model.modules():
        if any(id(p) in trained for p in module.parameters(recurse=False)):
            module.train()
