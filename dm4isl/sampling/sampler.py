"""One API for every reverse process: settings in, final sample + DDPMavg + intra-process std (data units) out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from dm4isl.data.normalize import OUTPUT_MODES, TargetRange, to_unit_range
from dm4isl.errors import ConfigError
from dm4isl.sampling.noise import NOISE_MODES, patch_generators
from dm4isl.sampling.reverse import METHODS, PRECISIONS, EpsFn, reverse_process
from dm4isl.sampling.schedule import NoiseSchedule
from dm4isl.sampling.stats import WindowStats

#: Keys of a sampler config that are not settings: Hydra's ``_target_`` and the option's ``name``.
IGNORED_KEYS = ("_target_", "name")


@dataclass(frozen=True)
class SamplerSettings:
    """Reverse-process settings (plain values, one Hydra ``sampler`` config).

    ``method`` "ddpm" (ancestral, all T steps) or "ddim" (``num_steps`` respaced steps, noise weight ``eta``);
    ``window`` [t_low, t_high) of the timesteps whose x̂0 is averaged; ``clip_x0`` model-space clip of x̂0
    (``None``: none); ``mean_correction`` the ε̂ mean fix; ``noise`` "per_patch" or "shared"; ``output`` "clip"
    or "batch_minmax"; ``precision`` of the network calls: None (as the caller runs them), "fp32" or "bf16"
    (autocast: faster where the hardware has bf16 units, slightly different numbers).
    """

    method: str = "ddpm"
    num_steps: int | None = None
    eta: float = 0.0
    window: tuple[int, int] = (300, 800)
    clip_x0: tuple[float, float] | None = (-1.0, 1.0)
    mean_correction: bool = True
    noise: str = "per_patch"
    seed: int = 0
    output: str = "clip"
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"sampler method {self.method!r}; expected one of {METHODS}")
        if self.noise not in NOISE_MODES:
            raise ConfigError(f"sampler noise {self.noise!r}; expected one of {NOISE_MODES}")
        if self.output not in OUTPUT_MODES:
            raise ConfigError(f"sampler output {self.output!r}; expected one of {OUTPUT_MODES}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"sampler precision {self.precision!r}; expected one of {PRECISIONS}")
        if not 0 <= self.window[0] < self.window[1]:
            raise ConfigError(f"averaging window {list(self.window)}; expected 0 ≤ t_low < t_high")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> SamplerSettings:
        """Build from a plain or OmegaConf mapping; lists become tuples; ``_target_`` and ``name`` keys are ignored.

        Unknown keys raise :class:`~dm4isl.errors.ConfigError` naming them.
        """
        values = {k: v for k, v in dict(config or {}).items() if k not in IGNORED_KEYS}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"sampler settings {unknown} unknown; expected some of {[f.name for f in fields(cls)]}")
        for key in ("window", "clip_x0"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-container form (for hyperparameters and logs)."""
        out = asdict(self)
        out["window"] = list(self.window)
        out["clip_x0"] = None if self.clip_x0 is None else list(self.clip_x0)
        return out


@dataclass
class Prediction:
    """Sampler output for a batch, in data units; tensors ``(B, C, Z, Y, X)`` float32.

    ``ddpm`` final sample and ``ddpmavg`` window mean of x̂0, both brought to [0, 1] per ``output``;
    ``std_intra`` std of x̂0 over the window (data units, unclipped); ``timesteps`` visited; ``n_calls`` network
    calls made (each on the whole batch).
    """

    ddpm: torch.Tensor
    ddpmavg: torch.Tensor
    std_intra: torch.Tensor
    timesteps: torch.Tensor
    window_timesteps: torch.Tensor
    n_calls: int


def window_products(
    x0_mean: torch.Tensor, x0_std: torch.Tensor, target: TargetRange, output: str = "clip"
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPMavg (brought to [0, 1] per ``output``) and intra-process std, in data units, from the model-space mean and
    std ``(B, C, Z, Y, X)`` of x̂0 over a window."""
    return to_unit_range(target.to_data(x0_mean), output), target.std_to_data(x0_std)


@torch.no_grad()
def sample(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    patch_ids: Sequence[int] | torch.Tensor,
    schedule: NoiseSchedule,
    settings: SamplerSettings,
    target: TargetRange | None = None,
    target_mean: float | None = None,
    out_channels: int = 1,
    seeds: Sequence[int] | None = None,
    record: WindowStats | None = None,
) -> Prediction:
    """Predict fluorescence for the brightfield batch ``cond`` ``(B, Cc, Z, Y, X)`` (data units in [0, 1]).

    ``patch_ids`` ``(B,)`` seed each patch's noise with ``settings.seed``. ``target_mean`` is the training-set
    fluorescence mean in data units; it is required when ``settings.mean_correction`` is on. ``seeds`` ``(B,)``
    gives each row its own seed instead of ``settings.seed`` (seed ensembles: row noise from (seed, patch id)).
    ``target`` is the model space the network works in (None: [0, 1], the data as is). ``record`` collects the
    model-space x̂0(t) of further windows on the same trajectory (:class:`WindowStats`).
    """
    target = target or TargetRange()
    if settings.mean_correction and target_mean is None:
        raise ValueError("mean_correction is on but no training-set target mean was given; expected a float")
    if seeds is None:
        generators = patch_generators(settings.seed, patch_ids, cond.device, settings.noise)
    else:
        ids = patch_ids.tolist() if isinstance(patch_ids, torch.Tensor) else list(patch_ids)
        if len(seeds) != len(ids):
            raise ValueError(f"{len(seeds)} seeds for {len(ids)} patches; expected one seed per row")
        generators = [
            patch_generators(int(s), [int(i)], cond.device, settings.noise)[0] for s, i in zip(seeds, ids, strict=True)
        ]
    result = reverse_process(
        eps_fn,
        cond,
        schedule,
        generators,
        out_channels=out_channels,
        method=settings.method,
        num_steps=settings.num_steps,
        eta=settings.eta,
        window=settings.window,
        clip_x0=settings.clip_x0,
        target_mean=float(target.to_model(target_mean)) if settings.mean_correction else None,
        precision=settings.precision,
        record=record,
    )
    ddpmavg, std_intra = window_products(result.x0_mean, result.x0_std, target, settings.output)
    return Prediction(
        ddpm=to_unit_range(target.to_data(result.sample), settings.output),
        ddpmavg=ddpmavg,
        std_intra=std_intra,
        timesteps=result.timesteps,
        window_timesteps=result.window_timesteps,
        n_calls=result.n_calls,
    )


def adjust_settings(stored: SamplerSettings, given: Mapping[str, Any] | None) -> SamplerSettings:
    """The sampler to use given a checkpoint's ``stored`` one and a config node ``given``.

    ``given`` with a ``name`` is a whole sampler option (``sampler=<name>``) and replaces ``stored``; without one
    its non-null keys adjust ``stored`` (``sampler.num_steps=10``, ``sampler.eta=0``, ``sampler.window=[200,800]``).
    None or all-null keeps ``stored``.
    """
    values = dict(given or {})
    if values.get("name"):
        return SamplerSettings.from_dict(values)
    changes = {k: v for k, v in values.items() if v is not None and k not in IGNORED_KEYS}
    if not changes:
        return stored
    return SamplerSettings.from_dict({**stored.to_dict(), **changes})
