"""StyleTransferModule: Johnson et al. 2016 training as a LightningModule.

One TransformerNet per style, trained against a frozen VGG16 loss network.
The style's Gram matrices are computed once; the content target needs no
autograd graph (it is the loss network applied to the input photograph).
"""

from __future__ import annotations

from typing import Any, Sequence

import pytorch_lightning as pl
import torch

from stylepipe.losses import content_loss, gram_matrix, style_loss, tv_loss
from stylepipe.models.transformer import TransformerNet
from stylepipe.models.vgg import LossNetwork, layer_names


class StyleTransferModule(pl.LightningModule):
    def __init__(
        self,
        style_image: torch.Tensor,
        loss_network_state: dict[str, torch.Tensor] | None = None,
        lr: float = 1e-3,
        lr_schedule: str = "none",
        content_weight: float = 1e5,
        style_weight: float = 1e10,
        tv_weight: float = 0.0,
        content_layers: Sequence[str] = ("relu2_2",),
        style_layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        style_layer_weights: Sequence[float] | None = None,
        channels_last: bool = False,
        val_grid_images: int = 4,
    ):
        super().__init__()
        # the style image and VGG weights are inputs, not hyperparameters
        self.save_hyperparameters(ignore=["style_image", "loss_network_state"])
        self.content_layers = list(content_layers)
        self.style_layers = list(style_layers)
        self.style_layer_weights = list(style_layer_weights or [1.0] * len(self.style_layers))
        if len(self.style_layer_weights) != len(self.style_layers):
            raise ValueError(
                f"train.style_layer_weights has {len(self.style_layer_weights)} entries but "
                f"train.style_layers has {len(self.style_layers)}: give one weight per layer"
            )
        self.transformer = TransformerNet()
        self.loss_network = LossNetwork(layer_names(self.content_layers, self.style_layers), loss_network_state)
        with torch.no_grad():
            features = self.loss_network(style_image.float())
        for name in self.style_layers:
            # [1, C, C]; recomputed from the style image on every start, so not saved
            self.register_buffer(f"style_gram_{name}", gram_matrix(features[name]), persistent=False)
        if channels_last:
            # the VGG only: eager, a channels_last TransformerNet trains slower (on CUDA its
            # InstanceNorms copy back to contiguous; on a CPU their GroupNorm route has a slower
            # backward, 15 % per step measured); compile_losses() converts it too
            self.loss_network.to(memory_format=torch.channels_last)

    # -- checkpoints hold the transformer only; the loss network comes from its file
    fingerprint: str | None = None  # set by `stylepipe train`: which configuration wrote a checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stylepipe_fingerprint"] = self.fingerprint
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("loss_network.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        own = {f"loss_network.{k}": v for k, v in self.loss_network.state_dict().items()}
        checkpoint["state_dict"] = {**own, **checkpoint["state_dict"]}

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if precision in ("bf16-mixed", "16-mixed"):
            self.cast_loss_network(torch.bfloat16 if precision.startswith("bf16") else torch.float16)

    def cast_loss_network(self, dtype: torch.dtype) -> None:
        """Keep the frozen VGG in the autocast dtype: the same numbers, without re-casting its weights every step.
        The input normalisation stays float32 and exact: the style targets were computed with it, and
        the ImageNet mean and std rounded to bfloat16 (123.675 → 123.5) would shift every feature."""
        mean, std = self.loss_network.mean.float().clone(), self.loss_network.std.float().clone()
        self.loss_network.to(dtype)
        self.loss_network.mean.data, self.loss_network.std.data = mean, std

    @property
    def style_grams(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"style_gram_{name}") for name in self.style_layers}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.transformer(images)

    def compile_losses(self, **options: Any) -> None:
        """``torch.compile`` the whole loss computation: TransformerNet, loss network and losses.

        Compiled, the TransformerNet runs channels_last too (when ``channels_last``
        is on): Inductor fuses InstanceNorm without the layout copies eager mode
        makes, so cuDNN's convolutions no longer convert NCHW↔NHWC at each layer.
        """
        if self.hparams.channels_last:
            self.transformer.to(memory_format=torch.channels_last)
            self._input_format = torch.channels_last
        self.losses = torch.compile(self.losses, **options)

    _input_format = torch.contiguous_format

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        # batches arrive as uint8: 4× less to copy to the device; then the network's dtype
        # (float32, or bfloat16 under bf16-true, where Lightning converts the whole module)
        dtype = self.transformer.conv1.conv2d.weight.dtype
        return batch.to(dtype).contiguous(memory_format=self._input_format)

    def losses(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        stylized = self.transformer(images)
        with torch.no_grad():
            # only up to the deepest content layer; no autograd graph for the target
            content_target = self.loss_network(images, self.content_layers)
        features = self.loss_network(stylized)
        hp = self.hparams
        content = hp.content_weight * content_loss(features, content_target, self.content_layers)
        style = hp.style_weight * style_loss(features, self.style_grams, self.style_layers, self.style_layer_weights)
        tv = hp.tv_weight * tv_loss(stylized) if hp.tv_weight else torch.zeros((), device=images.device)
        total = content + style + tv
        return {"content_loss": content, "style_loss": style, "tv_loss": tv, "total_loss": total}, stylized

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "batch_started"):
            datamodule.batch_started()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        losses, _ = self.losses(self._prepare(batch))
        # kept in callback_metrics; the curves callback logs them, one value per optimizer step
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=batch.shape[0], logger=False)
        # the detached parts go to callbacks (curves) without a device sync here
        return {"loss": losses["total_loss"], **{k: v.detach() for k, v in losses.items()}}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        images = self._prepare(batch)
        losses, stylized = self.losses(images)
        # logged by the curves callback at the step they belong to
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=batch.shape[0], sync_dist=True, logger=False)
        if batch_idx == 0:
            self._log_grid(images, stylized)

    def _log_grid(self, images: torch.Tensor, stylized: torch.Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if experiment is None or not hasattr(experiment, "add_image") or not self.trainer.is_global_zero:
            return
        from torchvision.utils import make_grid

        n = min(self.hparams.val_grid_images, images.shape[0])
        pairs = torch.cat([images[:n], stylized[:n].float().clamp(0, 255)]).float() / 255.0
        grid = make_grid(pairs.contiguous().cpu(), nrow=n)
        experiment.add_image("val/stylized", grid, global_step=self.global_step)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.transformer.parameters(), lr=hp.lr)
        if hp.lr_schedule == "none":
            return optimizer
        # optimizer steps of the whole run, as Lightning counts them: max_steps or
        # epochs × batches per process, with gradient accumulation
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        elif hp.lr_schedule == "step":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, step_milestones(steps), gamma=0.1)
        else:
            raise ValueError(f"train.lr_schedule: unknown schedule {hp.lr_schedule!r} (none, cosine, step)")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def step_milestones(steps: int) -> list[int]:
    """Where ``lr_schedule: step`` divides the rate by 10: a tenth for the last third, a hundredth for the last ninth.

    On a run too short for two distinct steps the second drop is left out
    rather than applied on top of the first (MultiStepLR counts a repeated
    milestone twice), and no drop comes before the first step.
    """
    return sorted({max(1, steps * 2 // 3), max(1, steps * 8 // 9)})
