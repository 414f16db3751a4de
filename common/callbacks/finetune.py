"""Freeze pretrained submodules and unfreeze them later with their own learning rate."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer


def get_submodule(pl_module: nn.Module, dotted_name: str) -> nn.Module:
    """``pl_module.text_encoder.encoder`` from ``"text_encoder.encoder"``, with an error naming the path."""
    try:
        return pl_module.get_submodule(dotted_name)
    except AttributeError as error:
        children = ", ".join(name for name, _ in pl_module.named_children())
        raise AttributeError(
            f"FreezeUnfreeze: {type(pl_module).__name__} has no submodule '{dotted_name}' "
            f"(top-level submodules: {children})"
        ) from error


class FreezeUnfreeze(BaseFinetuning):
    """Keep ``modules`` frozen (and in eval mode, so dropout does not perturb frozen features) until
    ``unfreeze_at_epoch``; then make them trainable and add them to the optimizer as a new param group with
    ``unfreeze_lr`` (or the first group's lr / ``lr_divisor`` when not given).

    ``unfreeze_at_epoch: null`` keeps them frozen for the whole run (a frozen CLIP encoder, say).
    The module's ``configure_optimizers`` should only pass parameters that require grad; the frozen ones join
    the optimizer when unfrozen. State (the added param groups) is checkpointed by ``BaseFinetuning``.
    """

    def __init__(
        self,
        modules: list[str],
        unfreeze_at_epoch: int | None = None,
        unfreeze_lr: float | None = None,
        lr_divisor: float = 10.0,
        train_bn: bool = False,
    ) -> None:
        super().__init__()
        if not modules:
            raise ValueError(
                "FreezeUnfreeze.modules is empty; name at least one submodule, e.g. 'text_encoder'"
            )
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ValueError(
                f"FreezeUnfreeze.unfreeze_at_epoch must be >= 0 or null, got {unfreeze_at_epoch}"
            )
        self.module_names = list(modules)
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.unfreeze_lr = unfreeze_lr
        self.lr_divisor = lr_divisor
        self.train_bn = train_bn

    def _modules(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        return [get_submodule(pl_module, name) for name in self.module_names]

    def is_frozen_at(self, epoch: int) -> bool:
        return self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(self._modules(pl_module), train_bn=self.train_bn)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if self.unfreeze_at_epoch is None or epoch != self.unfreeze_at_epoch:
            return
        # Same steps as ``BaseFinetuning.unfreeze_and_add_param_group``, plus de-duplication: a weight shared by
        # two submodules (T5/GPT-2 tie their input and output embeddings) would otherwise enter the new param
        # group twice, which torch warns about and a later torch will reject.
        modules = self._modules(pl_module)
        self.make_trainable(modules)
        params = self.filter_params(modules, train_bn=True, requires_grad=True)
        params = list({id(param): param for param in self.filter_on_optimizer(optimizer, params)}.values())
        lr = (
            optimizer.param_groups[0]["lr"] / self.lr_divisor
            if self.unfreeze_lr is None
            else float(self.unfreeze_lr)
        )
        if params:
            optimizer.add_param_group({"params": params, "lr": lr})

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.is_frozen_at(trainer.current_epoch):
            for module in self._modules(pl_module):
                module.eval()
