"""`TrainConfig`: the training stage's one frozen config, from presets, models, YAML and flags.

Precedence: named preset (default `paper`, the reference paper's recipe) < the `model` recipe's
settings (`MODEL_SETTINGS`: ours, deblurgan, pix2pix) < YAML file < flags. Every field carries
its help text (with units) in its metadata and one flag is generated per field, so
`ctdeblur-train --help` documents each of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from cli_shell.settings import add_config_flags as add_settings_flags
from cli_shell.settings import build_config, flag_settings, merge_settings, read_yaml_settings
from cli_shell.settings import setting as _field

VGG19_LAYERS = (
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_conv4", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_conv4", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_conv4", "block5_pool",
)
"""Layer names of Keras' VGG19 without its classifier: the choices of `perceptual_layer`."""

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
NORMS = ("batch", "instance", "layer", "none")
MODELS = ("ours", "paper", "deblurgan", "pix2pix")
"""Training recipes: ours (the measured best, docs/training.md), the reference paper's exactly as it
states it, and the two learned baselines of its Table 1."""
TRAIN_SUBDATASETS = 7

PRECISIONS = ("float32", "bf16")
"""Generator arithmetic at inference (`ctdeblur-deblur`, `ctdeblur-evaluate`): float32 (the export
as saved), or bf16: the convolutions in bfloat16 (oneDNN runs them on AMX or AVX512-BF16 where the
CPU has them), the global skip, the normalisation layers and the HU mapping in float32."""

NO_PERCEPTUAL = "none"
"""`perceptual_weights` value that turns the perceptual term off (no VGG19 is loaded)."""

MAX_SOFTENING_SIGMA = 6.0
"""Largest `shared_softening_sigma` (pixels)."""

DEFAULT_SOFTENING_SIGMA = 3.0
"""Default `shared_softening_sigma` (pixels): the value the quality runs of RESULTS.md trained with."""


def softening_radius(sigma_pixels: float) -> int:
    """Half-width (pixels) of the Gaussian taps of `model.data.soften_pair` for sigmas up to
    `sigma_pixels`: 3.3 sigma; the training crop must be larger."""
    return math.ceil(3.3 * sigma_pixels)


MAX_UNET_DEPTH = 10
"""Deepest U-Net allowed: inputs are padded to a multiple of 2^depth pixels (1,024 at 10)."""

RUNTIME_FIELDS = frozenset(
    {"strategy", "jit_compile", "checkpoint_every", "checkpoints_to_keep", "summary_every", "validation_every",
     "time_budget_minutes", "export_weights"}
)
"""Settings a resumed run may change: they change neither the maths nor the schedule."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (with the dataset); paper values by default."""

    model: str = _field(
        "ours",
        "training recipe, its settings applied on top of the preset (YAML and flags override them): ours (pixel "
        "Charbonnier + perceptual and adversarial terms weighted by gradient share, cosine learning rate, edge crops; "
        "docs/training.md), paper (the reference paper exactly: WGAN-GP + l1 VGG19 perceptual loss), deblurgan (Kupyn "
        "et al. 2018: WGAN-GP + l2 perceptual loss), pix2pix (Isola et al. 2017: conditional PatchGAN discriminator, "
        "BCE + l1_weight x pixel l1)",
        choices=MODELS,
    )
    generator: str = _field("resnet", "generator network: resnet (DeblurGAN) or unet (pix2pix)", choices=("resnet", "unet"))
    generator_filters: int = _field(
        64, "filters of the generator's first conv (resnet: x2, x4 after the downsampling convs; unet: doubling per level, at most x8)"
    )
    generator_blocks: int = _field(9, "ResBlocks in the resnet generator")
    generator_dropout: float = _field(0.5, "dropout rate inside each ResBlock, or of the U-Net's first 3 decoder blocks (training only)")
    unet_depth: int = _field(
        0, "down-sampling levels of the unet generator (pix2pix: 8); 0 = log2(crop_size), at most 8 (1-pixel bottleneck)"
    )
    critic: str = _field("patchgan", "critic network (pix2pix's discriminator: the same PatchGAN, fed (blurry, image) pairs)", choices=("patchgan",))
    generator_norm: str = _field(
        "instance", "normalisation inside the resnet generator: instance (DeblurGAN) or none (EDSR-style restoration "
        "networks: keeps absolute intensities)", choices=NORMS,
    )
    residual_output: str = _field(
        "tanh", "the resnet generator's residual: tanh (DeblurGAN: residual = tanh(conv), in [-1, 1]) or linear "
        "(residual = residual_scale x conv, uncapped)", choices=("tanh", "linear"),
    )
    residual_scale: float = _field(
        1.0, "linear residual only: factor on the last conv's output; < 1 makes steps of the last layer move the "
        "output by a few HU, the size of a deblurring correction",
    )
    critic_filters: int = _field(64, "filters of the critic's first conv block (doubling, at most x8)")
    critic_blocks: int = _field(4, "conv blocks of the PatchGAN critic (normalised as critic_norm on all but the first)")
    critic_norm: str = _field(
        "batch", "normalisation in the PatchGAN critic: batch (DeblurGAN, pix2pix), layer (per sample: compatible with "
        "the gradient penalty, as WGAN-GP advises) or none", choices=NORMS,
    )

    critic_steps: int = _field(5, "critic (discriminator) updates per generator update")
    gp_weight: float = _field(10.0, "gradient-penalty weight alpha of WGAN-GP")
    perceptual_weight: float = _field(100.0, "lambda: weight of the perceptual loss against the adversarial loss")
    perceptual_layer: str = _field(
        "block3_conv3", "VGG19 layer whose activations the perceptual loss compares (blockB_convC or blockB_pool)",
        choices=VGG19_LAYERS,
    )
    perceptual_distance: str = _field("l1", "feature distance: l1 (the paper) or l2 (original DeblurGAN)", choices=("l1", "l2"))
    l1_weight: float = _field(100.0, "pix2pix only: lambda, weight of the pixel l1 loss (network range [-1, 1]) against the adversarial loss")
    pixel_weight: float = _field(
        0.0, "ours/deblurgan: weight of the pixel content term, Charbonnier sqrt(d^2 + eps^2) of restored - sharp in "
        "network units, against the adversarial loss; 0 = none (the paper)",
    )
    pixel_loss: str = _field(
        "charbonnier", "the pixel content term: charbonnier (per pixel, a smooth l1), log_mse (per crop, "
        "10 log10(MSE + eps^2): -PSNR, every crop's relative error alike) or rmse (per crop, sqrt(MSE + eps^2))",
        choices=("charbonnier", "log_mse", "rmse"),
    )
    charbonnier_epsilon_hu: float = _field(1.0, "eps of the Charbonnier pixel term (and the floor of log_mse and rmse), in HU")
    adversarial_weight: float = _field(1.0, "weight of the adversarial term in the generator loss (the paper: 1)")
    adversarial_gradient_share: float = _field(
        0.0, "if > 0: the adversarial weight is set every step so that its gradient on the generator's last layer "
        "is this fraction of the pixel term's (adversarial_weight is then ignored; needs pixel_weight > 0); 0 = fixed "
        "weight",
    )
    perceptual_weights: str = _field(
        "imagenet",
        "VGG19 weights: imagenet (Keras cache, then download), a .h5 PATH, random-init (no ImageNet features: plumbing "
        "tests only), or none (no perceptual term: the content loss is the pixel term alone)",
    )
    perceptual_window_hu: tuple[float, float] = _field(
        (-1024.0, 3071.0), "HU window mapped to VGG19's 0..255 input (the paper: the whole network window); a CT window "
        "such as (-160, 240) makes tens of HU visible to VGG",
    )
    perceptual_gradient_share: float = _field(
        0.0, "if > 0: the perceptual weight is set every step so that its gradient on the generator's last layer is "
        "this fraction of the pixel term's (perceptual_weight is then ignored; needs pixel_weight > 0); 0 = fixed weight",
    )
    generator_learning_rate: float = _field(1e-4, "Adam learning rate of the generator")
    critic_learning_rate: float = _field(1e-4, "Adam learning rate of the critic")
    adam_beta_1: float = _field(0.5, "Adam beta_1 of both optimizers (DeblurGAN's value)")
    adam_beta_2: float = _field(0.999, "Adam beta_2 of both optimizers")
    generator_warmup_steps: int = _field(
        0, "first steps train the generator alone on its weighted content terms (perceptual and pixel; the paper's "
        "faster recipe); 0 = off"
    )
    learning_rate_schedule: str = _field(
        "constant", "both learning rates over the whole schedule (all sub-datasets): constant (the paper) or cosine "
        "(linear warm-up over learning_rate_warmup_steps, then cosine decay to learning_rate_final_fraction)",
        choices=("constant", "cosine"),
    )
    learning_rate_warmup_steps: int = _field(0, "cosine schedule: generator steps of linear warm-up from 0")
    learning_rate_final_fraction: float = _field(0.01, "cosine schedule: the final learning rate as a fraction of the peak")

    subdatasets: tuple[int, ...] = _field(tuple(range(TRAIN_SUBDATASETS)), "train sub-datasets fed one after another (train-K dirs), in this order")
    epochs: int = _field(5, "epochs on each sub-dataset before moving to the next")
    max_steps_per_epoch: int = _field(0, "cap on steps per epoch (a step = one global batch); 0 = the whole sub-dataset")
    batch_per_replica: int = _field(2, "pairs per replica per step; global batch = this x replicas")
    crop_size: int = _field(256, "side of the random square crop taken at the same place in both images (pixels)")
    crop_candidates: int = _field(
        1, "random crop positions drawn per pair; the one where blurry and sharp differ most (mean |difference|) is "
        "trained on, so crops hold the edges that blur changes. 1 = uniform random crops (the paper)",
    )
    random_orientation: bool = _field(
        False, "turn each training crop (blurry and sharp alike) by a random multiple of 90 degrees and mirror it at "
        "random: 8x the orientations of anatomy and motion; exact for motion blur, whose kernel turns with the image",
    )
    shared_softening: float = _field(
        0.0, "fraction of training crops softened, blurry and sharp alike, by one isotropic Gaussian (sigma uniform "
        "in 0..shared_softening_sigma pixels): softness that is not motion (a thicker slab, a softer reconstruction "
        "kernel), which the model must leave as it is; exact, since the Gaussian commutes with the motion blur",
    )
    shared_softening_sigma: float = _field(DEFAULT_SOFTENING_SIGMA, "largest sigma (pixels) of the shared softening")
    still_fraction: float = _field(
        0.0, "fraction of training crops made still: the sharp crop is also the input, so the model learns that an "
        "image may hold no motion at all and leaves unblurred anatomy (a real skull, a lossy slice) as it is",
    )
    hu_window: tuple[float, float] = _field((-1024.0, 3071.0), "HU range mapped to the network's [-1, 1] (values outside are clipped)")
    shuffle_buffer: int = _field(2048, "pairs in the shuffle buffer (about 1 MB each at 512x512)")
    seed: int = _field(0, "seed of weights, crops, shuffling, dropout and penalty interpolation")

    strategy: str = _field("auto", "tf.distribute strategy: auto, default, mirrored (all local GPUs), multi_worker (TF_CONFIG)", choices=STRATEGIES)
    mixed_precision: bool = _field(False, "float16 compute with loss scaling (GPUs)")
    jit_compile: bool = _field(False, "compile the train step with XLA")
    checkpoint_every: int = _field(500, "save a checkpoint every N steps (and at the end of each sub-dataset)")
    checkpoints_to_keep: int = _field(3, "newest checkpoints kept in LOGDIR/checkpoints")
    summary_every: int = _field(50, "write loss scalars to TensorBoard every N steps")
    validation_every: int = _field(500, "validation PSNR/SSIM and image triplets every N steps (and at the end)")
    validation_pairs: int = _field(
        4, "pairs in the fixed validation batch: the dataset's validation/ split if it has one, else pairs spread over "
        "the train sub-datasets (never the test split); 0 = no validation",
    )
    validation_crop: int = _field(256, "side of the crop of each validation pair, at its largest blur difference (pixels); 0 = whole slices")
    validation_window_hu: tuple[float, float] = _field((-1000.0, 1000.0), "HU window of validation PSNR/SSIM (data range = width) and of the images")
    export_weights: str = _field(
        "best", "--export writes the generator of the best validation step (mean PSNR gain over blurry), or the last "
        "step's; best falls back to last without validation", choices=("best", "last"),
    )
    time_budget_minutes: float = _field(
        0.0, "stop (checkpoint and export) after this many minutes of training in this run, for equal wall-clock "
        "comparisons; each sub-dataset gets an equal share of it (what is left, over the sub-datasets left) and the "
        "cosine learning rate reaches its final fraction at its end; 0 = no limit")

    def validate(self) -> TrainConfig:
        """Returns self, or raises ValueError naming the bad setting."""
        positive = (
            "generator_filters", "generator_blocks", "critic_filters", "critic_blocks", "critic_steps", "epochs",
            "batch_per_replica", "crop_size", "shuffle_buffer", "checkpoint_every", "checkpoints_to_keep",
            "summary_every", "validation_every", "crop_candidates",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps_per_epoch", "generator_warmup_steps", "validation_pairs", "gp_weight", "perceptual_weight",
                     "unet_depth", "l1_weight", "pixel_weight", "adversarial_weight", "adversarial_gradient_share",
                     "learning_rate_warmup_steps", "validation_crop", "residual_scale", "time_budget_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.unet_depth > MAX_UNET_DEPTH:
            raise ValueError(f"unet_depth must be at most {MAX_UNET_DEPTH} (0 = from crop_size), got {self.unet_depth}")
        if not 0.0 <= self.generator_dropout < 1.0:
            raise ValueError(f"generator_dropout must be in [0, 1), got {self.generator_dropout}")
        if self.crop_size < 16:
            raise ValueError(f"crop_size must be >= 16 pixels (the critic downsamples 8x), got {self.crop_size}")
        if self.validation_pairs and 0 < self.validation_crop < 16:
            raise ValueError(f"validation_crop must be 0 or >= 16 pixels (SSIM uses an 11-pixel window), got {self.validation_crop}")
        if not 0.0 < self.learning_rate_final_fraction <= 1.0:
            raise ValueError(f"learning_rate_final_fraction must be in (0, 1], got {self.learning_rate_final_fraction}")
        if not 0.0 <= self.shared_softening <= 1.0:
            raise ValueError(f"shared_softening must be in [0, 1], got {self.shared_softening}")
        if not 0.0 <= self.still_fraction < 1.0:
            raise ValueError(f"still_fraction must be in [0, 1), got {self.still_fraction}")
        if not 0.0 < self.shared_softening_sigma <= MAX_SOFTENING_SIGMA:
            raise ValueError(f"shared_softening_sigma must be in (0, {MAX_SOFTENING_SIGMA}] pixels, got {self.shared_softening_sigma}")
        reach = softening_radius(self.shared_softening_sigma)
        if self.shared_softening and self.crop_size <= reach:
            raise ValueError(f"crop_size {self.crop_size} is too small for shared_softening_sigma "
                             f"{self.shared_softening_sigma:g}: the crop must exceed the softening's {reach}-pixel reach")
        if self.charbonnier_epsilon_hu <= 0:
            raise ValueError(f"charbonnier_epsilon_hu must be > 0, got {self.charbonnier_epsilon_hu}")
        if self.generator_norm == "batch":
            raise ValueError("generator_norm must be instance, layer or none (batch norm is for the critic)")
        for name in ("hu_window", "validation_window_hu", "perceptual_window_hu"):
            window = getattr(self, name)
            if len(window) != 2 or not window[0] < window[1]:
                raise ValueError(f"{name} must be two HU values low < high, got {window}")
        if not self.subdatasets or len(set(self.subdatasets)) != len(self.subdatasets):
            raise ValueError(f"subdatasets must be a non-empty list without repeats, got {self.subdatasets}")
        if any(not 0 <= s < TRAIN_SUBDATASETS for s in self.subdatasets):
            raise ValueError(f"subdatasets must be in 0..{TRAIN_SUBDATASETS - 1}, got {self.subdatasets}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if not self.perceptual_weights:
            raise ValueError("perceptual_weights must be imagenet, random-init, none or a path to a VGG19 .h5 file")
        if (self.adversarial_gradient_share or self.perceptual_gradient_share) and not self.pixel_weight:
            raise ValueError("adversarial_gradient_share and perceptual_gradient_share need pixel_weight > 0 "
                             "(the shares are fractions of the pixel term's gradient)")
        if self.model != "pix2pix" and self.perceptual_weights == NO_PERCEPTUAL and not self.pixel_weight:
            raise ValueError("perceptual_weights none leaves no content loss: set pixel_weight > 0")
        return self

    @property
    def perceptual(self) -> bool:
        """Whether the content loss has the VGG19 perceptual term (ours, deblurgan unless perceptual_weights is none)."""
        return self.model != "pix2pix" and self.perceptual_weights != NO_PERCEPTUAL

    @property
    def adversarial(self) -> bool:
        """Whether ours/deblurgan train a critic (pix2pix always has its discriminator)."""
        return bool(self.adversarial_weight or self.adversarial_gradient_share)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists) for YAML and TensorBoard."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS: Mapping[str, Mapping[str, Any]] = {
    "paper": {},
    "small": {
        "generator_filters": 16,
        "generator_blocks": 6,
        "critic_filters": 32,
        "perceptual_layer": "block2_conv2",
        "generator_warmup_steps": 300,
        "epochs": 20,
        "max_steps_per_epoch": 15,
        "batch_per_replica": 8,
        "crop_size": 128,
        "shuffle_buffer": 256,
        "checkpoint_every": 100,
        "summary_every": 10,
        "validation_every": 100,
        "validation_pairs": 8,
        "validation_crop": 0,
    },
    "tiny": {
        "generator_filters": 8,
        "generator_blocks": 2,
        "critic_filters": 8,
        "critic_blocks": 3,
        "perceptual_layer": "block2_conv2",
        "epochs": 1,
        "max_steps_per_epoch": 3,
        "crop_size": 32,
        "shuffle_buffer": 16,
        "checkpoint_every": 5,
        "summary_every": 1,
        "validation_every": 5,
        "validation_pairs": 2,
        "validation_crop": 64,
    },
}
"""Named settings: `paper` (the reference recipe, for GPUs), `small` (a useful CPU run of under
an hour on 2 cores: 20 epochs of at most 15 steps of 8 pairs on each sub-dataset, at most 2,100
steps, validated on 8 whole slices), `tiny` (seconds, for tests and the demo)."""


MODEL_SETTINGS: Mapping[str, Mapping[str, Any]] = {
    "ours": {
        "generator_norm": "none",
        "residual_output": "linear",
        "residual_scale": 0.1,
        "generator_dropout": 0.0,
        "critic_norm": "none",
        "critic_steps": 1,
        "pixel_weight": 1.0,
        "pixel_loss": "log_mse",
        "adversarial_weight": 0.0,
        "adversarial_gradient_share": 0.0,
        "perceptual_gradient_share": 0.1,
        "perceptual_window_hu": (-160.0, 240.0),
        "generator_learning_rate": 5e-4,
        "critic_learning_rate": 2e-4,
        "adam_beta_1": 0.9,
        "learning_rate_schedule": "cosine",
        "learning_rate_warmup_steps": 50,
        "crop_candidates": 4,
        "random_orientation": True,
        "shared_softening": 0.5,
    },
    "paper": {},
    "deblurgan": {
        "perceptual_distance": "l2",
        "generator_warmup_steps": 0,
    },
    "pix2pix": {
        "generator": "unet",
        "critic_steps": 1,
        "generator_learning_rate": 2e-4,
        "critic_learning_rate": 2e-4,
        "generator_warmup_steps": 0,
    },
}
"""Each model's differences from the reference paper's recipe (the field defaults, `paper`),
applied on top of the preset: `ours` is the recipe measured best on 2 CPU cores (docs/training.md,
"Our recipe", gives the measurement behind each value), `deblurgan` is Kupyn et al. 2018 (l2 perceptual loss; no generator-first warm-up, which is the
reference paper's addition), `pix2pix` is Isola et al. 2017 (U-Net generator, one discriminator
update per generator update, Adam 2e-4; its conditional BCE discriminator and pixel l1 loss come
with the model itself). docs/training.md, "Models", justifies each setting."""


def config_from_dict(values: Mapping[str, Any], base: TrainConfig | None = None, where: str = "config") -> TrainConfig:
    """`base` (default: paper values) updated by `values`, validated; unknown names are an error."""
    merged = merge_settings(TrainConfig, dataclasses.asdict(base or TrainConfig()), values, where)
    return build_config(TrainConfig, merged)


def preset_config(name: str, model: str = "ours") -> TrainConfig:
    """The named preset's config with the `model` recipe's settings on top (ValueError naming the
    presets or the models if `name` or `model` is unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if model not in MODEL_SETTINGS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    config = config_from_dict(PRESETS[name], where=f"preset {name}")
    return config_from_dict({"model": model, **MODEL_SETTINGS[model]}, base=config, where=f"model {model}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --preset, --config and one flag per setting (default: unset, i.e. preset/YAML value)."""
    add_settings_flags(parser, TrainConfig, "training settings (preset < --model's settings < --config YAML < these flags)",
                       PRESETS, "named settings: paper (the reference recipe, GPUs), small (<= 1 h on 2 CPU cores), "
                       "tiny (seconds)",
                       help_suffix={"model": "; settings: " + "; ".join(
                           f"{model}: " + " ".join(f"{k}={v}" for k, v in settings.items())
                           for model, settings in MODEL_SETTINGS.items() if settings)})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config named by --preset, updated by the model's settings (--model, else `model` in the
    YAML, else ours), then by --config YAML, then by explicit flags."""
    settings = read_yaml_settings(args.config) if args.config else {}
    model = args.model or settings.get("model", TrainConfig.model)
    if not isinstance(model, str) or model not in MODEL_SETTINGS:
        raise ValueError(f"unknown model {model!r} in {args.config}; choose one of {', '.join(MODELS)}")
    config = preset_config(args.preset, model)
    if settings:
        config = config_from_dict(settings, base=config, where=args.config)
    return config_from_dict(flag_settings(args, TrainConfig), base=config, where="flags")
