"""pix2pix-style conditional GAN baseline in 3-D (U-Net generator, PatchGAN discriminator) as a LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from dm4isl.io.layout import GAN
from dm4isl.models.checkpoint import ARRAY_AXES, TENSOR_AXES, check_axes
from dm4isl.models.nets.patchgan import build_patchgan, patchgan_output_shape
from dm4isl.models.nets.unet3d import build_unet3d
from dm4isl.models.unet import BaselineModule

#: Adversarial losses on discriminator logits: ``vanilla`` (pix2pix, binary cross-entropy) or ``lsgan`` (least squares).
GAN_LOSSES = {"vanilla": F.binary_cross_entropy_with_logits, "lsgan": F.mse_loss}
#: Discriminator targets for real and generated pairs.
REAL_LABEL, FAKE_LABEL = 1.0, 0.0
#: pix2pix halves the discriminator loss to slow it down relative to the generator.
DISCRIMINATOR_LOSS_SCALE = 0.5


class GANModule(BaselineModule):
    """Conditional GAN after pix2pix (Isola et al. 2017) with 3-D networks; batches are dicts of ``(B, 1, Z, Y, X)``.

    The generator (a ``unet3d`` config, sigmoid output) maps brightfield to fluorescence; the PatchGAN
    discriminator (a ``patchgan`` config) judges ``[brightfield, fluorescence]`` pairs stacked on the channel axis.
    Generator loss = ``adv_weight`` · adversarial + ``l1_weight`` · L1 (pix2pix: 1 and 100); discriminator loss
    = ½ (real + fake). Manual optimisation: per training step the discriminator and then the generator each take
    exactly one step, each with only its own parameters requiring gradients (``toggle_optimizer``), and gradients are
    averaged across DDP processes once per backward pass (``manual_backward``). Lightning counts every optimiser step,
    so ``trainer.global_step`` (and ``max_steps``) advance by two per batch (Lightning-AI/pytorch-lightning#17958).
    """

    output_name = GAN

    def __init__(
        self,
        generator: dict[str, Any],
        discriminator: dict[str, Any],
        organelle: dict[str, Any] | None = None,
        patch_size: list[int] | None = None,
        gan_loss: str = "vanilla",
        l1_weight: float = 100.0,
        adv_weight: float = 1.0,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: list[float] | tuple[float, float] = (0.5, 0.999),
        sw_overlap: float = 0.25,
        sw_batch_size: int = 4,
        array_axes: str = ARRAY_AXES,
        tensor_axes: str = TENSOR_AXES,
    ) -> None:
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss {gan_loss!r}; expected one of {sorted(GAN_LOSSES)}")
        check_axes(array_axes, tensor_axes)
        super().__init__(generator, patch_size)
        self.save_hyperparameters()
        self.automatic_optimization = False
        if patch_size is not None:
            patchgan_output_shape(discriminator, patch_size)
        self.net = build_unet3d(generator, in_channels=1, out_channels=1)
        self.discriminator = build_patchgan(discriminator, in_channels=2)

    def setup(self, stage: str) -> None:
        """Under DDP, switch on the detection of unused parameters before the model is wrapped.

        Each backward pass leaves the other network's (toggled-off) parameters without gradients, which DDP's reducer
        otherwise treats as an error.
        """
        strategy = self.trainer.strategy
        if stage != "fit" or not isinstance(strategy, DDPStrategy):
            return
        if not strategy._ddp_kwargs.get("find_unused_parameters"):
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("GAN under DDP: find_unused_parameters=True (one network is frozen in each backward pass)")

    def _adversarial(self, logits: torch.Tensor, label: float) -> torch.Tensor:
        """Adversarial loss of discriminator ``logits`` ``(B, 1, z, y, x)`` against a constant ``label``."""
        return GAN_LOSSES[self.hparams.gan_loss](logits.float(), torch.full_like(logits, label, dtype=torch.float32))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        bf, fl = batch["bf"], batch["fl"]
        fake = self.net(bf)

        self.toggle_optimizer(opt_d)
        d_real = self.discriminator(torch.cat([bf, fl], dim=1))
        d_fake = self.discriminator(torch.cat([bf, fake.detach()], dim=1))
        loss_real, loss_fake = self._adversarial(d_real, REAL_LABEL), self._adversarial(d_fake, FAKE_LABEL)
        loss_d = DISCRIMINATOR_LOSS_SCALE * (loss_real + loss_fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        adversarial = self._adversarial(self.discriminator(torch.cat([bf, fake], dim=1)), REAL_LABEL)
        l1 = F.l1_loss(fake.float(), fl.float())
        loss_g = self.hparams.adv_weight * adversarial + self.hparams.l1_weight * l1
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        n = bf.shape[0]
        self.log_dict({"train/loss_d": loss_d, "train/loss_g": loss_g, "train/adversarial": adversarial},
                      batch_size=n)
        self.log("train/l1", l1, prog_bar=True, batch_size=n)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the generator (first) and the discriminator (second), pix2pix's betas by default."""
        betas = tuple(self.hparams.betas)
        return [
            torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr_g, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr_d, betas=betas),
        ]
