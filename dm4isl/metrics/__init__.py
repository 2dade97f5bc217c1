"""Image-comparison metrics on ``(Z, Y, X)`` arrays in [0, 1]: plain functions, no Lightning inside."""

from dm4isl.metrics.basic import ms_ssim, ms_ssim_batch, mse, pcc, pooled_mse, pooled_pcc

__all__ = ["ms_ssim", "ms_ssim_batch", "mse", "pcc", "pooled_mse", "pooled_pcc"]
