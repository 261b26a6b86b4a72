"""The typed experiment schema: every YAML experiment file is validated against ``ExperimentConfig``.

Sections: ``data``, ``model``, ``method``, ``optim``, ``schedule``, ``train``, ``eval``, ``log``, and the optional
``feature_distance`` (a labelled-source loss term shared by the methods). Every section is
strict (an unknown key is an error); defaults live here so an experiment file only states what differs. The
``method`` section and the dataset entries are unions of the config classes in the ``METHODS`` and ``DATASETS``
registries, so a new method or dataset module extends the schema by registering itself. ``docs/config.md`` is
generated from this schema (``python tools/config_reference.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dasuite.data.augment import AugmentConfig
from dasuite.data.fda import FDAConfig
from dasuite.data.sampling import training_variants
from dasuite.errors import ConfigError
from dasuite.methods.base import OhemConfig
from dasuite.methods.feature_distance import FeatureDistanceConfig
from dasuite.models.config import ModelConfig
from dasuite.registry import DATASETS, METHODS
from dasuite.schedule import ScheduleConfig
from dasuite.schema_base import Section

__all__ = ["DataConfig", "DatasetEntry", "EvalConfig", "ExperimentConfig", "LogConfig", "MethodSection", "MixConfig",
           "ModelConfig", "OptimConfig", "ScheduleConfig", "TrainConfig"]

# One entry per registered dataset; `name` selects the member (pydantic discriminated union).
DatasetEntry = Annotated[Union[tuple(DATASETS.configs().values())], Field(discriminator="name")]
# One entry per registered method.
MethodSection = Annotated[Union[tuple(METHODS.configs().values())], Field(discriminator="name")]

METRIC_NAMES = ("mIoU", "mAcc", "aAcc", "fwIoU")


# A training role (data.source / data.target) is one dataset entry plus the training keys `subset` and `rcs`
# (data/sampling.py), or a mix of such entries (`name: mix`; the YAML shorthands are converted by DataConfig).
_TRAIN_VARIANTS = training_variants(DatasetEntry)
TrainEntry = Annotated[Union[_TRAIN_VARIANTS], Field(discriminator="name")]


class MixConfig(Section):
    """A training role drawn from several datasets (stacked into one batch, augmented with ``augment``).
    ``weights``: ``size`` (default; an epoch-shuffled concatenation, i.e. proportional to the entries' sizes),
    ``equal``, or one positive weight per entry (normalised; per batch element the entry is drawn by weight)."""

    name: Literal["mix"] = "mix"
    """Marks the role as a mix (implied by the ``{mix: [...]}`` and plain-list forms)."""
    mix: list[TrainEntry] = Field(min_length=1)
    """The dataset entries drawn from; they must share class names, decoded size and whether they have labels."""
    weights: Union[Literal["size", "equal"], list[Annotated[float, Field(gt=0)]]] = "size"
    """How entries are drawn: ``size`` (proportional to their sizes), ``equal``, or one positive weight each."""
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    """Training augmentation of every entry of the mix (the entries themselves may not set ``augment``)."""

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any, info: ValidationInfo) -> Any:
        entries = info.data.get("mix") or []
        if v in ("size", "equal"):
            return v
        numbers = isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        if not numbers or not all(x > 0 for x in v) or (entries and len(v) != len(entries)):
            raise ValueError(f"expected 'size', 'equal' or {len(entries) or 'one'} positive numbers (one per entry "
                             f"of mix)")
        return v


TrainRole = Annotated[Union[(*_TRAIN_VARIANTS, MixConfig)], Field(discriminator="name")]


class DataConfig(Section):
    """Datasets per role. ``source``: labelled training data; ``target``: target-domain training images (used by
    adaptation methods); ``val``: evaluated every ``train.eval_interval``; ``test``: evaluated once at the end with
    the best checkpoint. ``source`` and ``target`` may be a mix: ``{mix: [entries], weights: ...}`` or a plain
    list of entries (= ``weights: size``), and their entries may set ``subset`` and ``rcs``."""

    resize: Optional[tuple[int, int]] = None
    """(width, height) every entry is resized to at decode time unless it sets its own; null = stored size."""
    num_workers: int = Field(2, ge=0)
    """DataLoader worker processes per process (decoding only; augmentation runs on the device)."""
    source: TrainRole
    """Labelled training data: a dataset entry, a mix ``{mix: [entries], weights: ...}`` or a list of entries."""
    target: Optional[TrainRole] = None
    """Target-domain training images for adaptation methods (entry, mix or list; labels unused); null = none."""
    val: Optional[DatasetEntry] = None
    """Evaluated every ``train.eval_interval`` iterations to select the best checkpoint; null = no validation."""
    test: Optional[DatasetEntry] = None
    """Evaluated once at the end with the best checkpoint (the final weights without ``val``); null = no test."""
    fda: Optional[FDAConfig] = None
    """Fourier Domain Adaptation of every source batch with ``data.target`` images, for any method (Yang & Soatto,
    CVPR'20; docs/fda.md); null = off."""

    @field_validator("fda")
    @classmethod
    def _fda_needs_target(cls, v: Optional[FDAConfig], info: ValidationInfo) -> Optional[FDAConfig]:
        if v is not None and v.target_role in info.data and info.data[v.target_role] is None:
            raise ValueError(f"data.fda needs target images: set data.{v.target_role} (or remove data.fda)")
        return v

    @field_validator("source", "target", mode="before")
    @classmethod
    def _mix_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):
            return {"name": "mix", "mix": v}
        if isinstance(v, dict) and "mix" in v and "name" not in v:
            return {"name": "mix", **v}
        return v

    def entries(self) -> dict[str, Any]:
        """Every configured dataset entry by its key under ``data``: ``source``, ``target``, ``val``, ``test``, and
        the entries of a mix as ``source.mix.0``, ``source.mix.1``, ... (roles left unset are skipped)."""
        out: dict[str, Any] = {}
        for role in ("source", "target", "val", "test"):
            entry = getattr(self, role)
            if entry is not None and entry.name == "mix":
                out.update({f"{role}.mix.{i}": e for i, e in enumerate(entry.mix)})
            elif entry is not None:
                out[role] = entry
        return out


class OptimConfig(Section):
    """Optimizer and parameter groups. ``head_lr_mult`` multiplies the lr of the model's head parameters (SegFormer's
    recipe uses 10); ``norm_weight_decay`` applies to normalisation layers and position blocks (0 in that recipe)."""

    name: Literal["adamw", "sgd"] = "adamw"
    """Optimizer of the trained network (adversarial methods' discriminators have their own)."""
    lr: float = Field(6e-5, gt=0)
    """Base learning rate (the head's is ``lr * head_lr_mult``)."""
    weight_decay: float = Field(0.01, ge=0)
    """Weight decay (decoupled for AdamW, L2 for SGD)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2); unused by SGD."""
    momentum: float = Field(0.9, ge=0)
    """SGD momentum; unused by AdamW."""
    nesterov: bool = False
    """Use Nesterov momentum (SGD only)."""
    head_lr_mult: float = Field(1.0, gt=0)
    """Learning-rate multiplier of the head (decoder) and of extra modules such as KD projectors (SegFormer: 10)."""
    norm_weight_decay: Optional[float] = Field(0.0, ge=0)
    """Weight decay of the body's normalisation layers and position blocks (SegFormer: 0); null = ``weight_decay``."""
    grad_clip: Optional[float] = Field(None, gt=0)
    """Maximum total gradient norm, clipped before each optimizer step; null = no clipping."""
    lr_reference_batch: Optional[int] = Field(None, gt=0)
    """Linear learning-rate scaling: every learning rate of this optimizer is multiplied by (global batch /
    ``lr_reference_batch``); null = none, ``lr`` is used as written at any batch size and number of processes."""
    layer_decay: Optional[float] = Field(None, gt=0, le=1)
    """Layer-wise lr decay d (BEiT, DINOv2 / UniMatch V2 fine-tuning): transformer block i of N gets
    ``lr * d ** (N - i)``, the embeddings ``d ** (N + 1)``, the head ``lr * head_lr_mult``; only for models that
    number their layers (``dinov2_*``); null = off."""


class TrainConfig(Section):
    """Iteration-based training. Without ``global_batch_size``, ``batch_size`` is per process and ``grad_accum``
    micro-batches make one iteration, so the global batch grows with the number of processes; with it, the global
    batch is fixed and each process's micro-batch and accumulation are derived (``per_process``)."""

    max_iters: int = Field(1000, gt=0)
    """Training length in iterations (optimizer steps)."""
    batch_size: int = Field(4, gt=0)
    """Images per process and micro-batch (for each data role the method draws); with ``global_batch_size``, the
    largest micro-batch one process takes (what fits in its memory)."""
    grad_accum: int = Field(1, gt=0)
    """Micro-batches accumulated into one iteration (derived instead when ``global_batch_size`` is set)."""
    global_batch_size: Optional[int] = Field(None, gt=0)
    """Images per iteration over all processes (per data role): each of N processes takes global/N of them, in
    micro-batches of the largest divisor of global/N not above ``batch_size``, accumulated; an error when N does
    not divide it. null = ``batch_size`` x ``grad_accum`` per process (the global batch grows with N)."""
    eval_interval: int = Field(500, gt=0)
    """Iterations between validations on ``data.val`` (also run at the end)."""
    checkpoint_interval: int = Field(500, gt=0)
    """Iterations between writes of the resumable ``last.pt`` checkpoint (also at the end)."""
    log_interval: int = Field(20, gt=0)
    """Iterations between scalar logs and checks for a non-finite loss."""
    best_metric: Literal["mIoU", "mAcc", "aAcc", "fwIoU"] = "mIoU"
    """Validation metric that selects the best checkpoint (higher is better)."""
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = None
    """Mixed-precision mode; null = from ``accelerate launch --mixed_precision`` or the Accelerate config."""
    init_from: Optional[str] = None
    """Weights file (``.safetensors``, or a ``.pt`` checkpoint's model) that initialises the network, with a fresh
    optimizer and schedule (not on resume); null = none."""
    grad_checkpointing: bool = False
    """Activation checkpointing of the encoder's blocks (SegFormer layers, ResNet / MobileNetV2 blocks): less
    activation memory for one more encoder forward per step; same losses and gradients (docs/benchmarks.md)."""
    compile: bool = False
    """``torch.compile`` the trained network (and extra trained modules) through Accelerate's dynamo support;
    checkpoints stay plain state dicts, evaluation runs the eager network (docs/benchmarks.md, "Speed levers")."""
    compile_backend: Literal["inductor", "aot_eager", "eager", "cudagraphs"] = "inductor"
    """torch.compile backend with ``compile: true`` (``aot_eager``/``eager``: no code generation, for debugging)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode with ``compile: true`` (``reduce-overhead``: CUDA graphs; ``max-autotune``: kernel search)."""
    channels_last: bool = False
    """Channels-last memory format for the trained network's weights and the training images (pays for the
    convolutional networks on GPUs: DeepLabV2/V3+; the logits are made contiguous for the loss)."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms for each new input shape and keep the fastest (CUDA only; no
    effect on the CPU); off = cuDNN's heuristics, for fewer nondeterministic kernels."""

    @model_validator(mode="after")
    def _global_or_accum(self) -> "TrainConfig":
        if self.global_batch_size is not None and self.grad_accum != 1:
            raise ValueError(f"grad_accum ({self.grad_accum}) is derived from global_batch_size "
                             f"({self.global_batch_size}): remove grad_accum, or global_batch_size")
        return self

    def per_process(self, num_processes: int) -> tuple[int, int]:
        """``(micro_batch, grad_accum)`` of each of ``num_processes`` processes (see ``global_batch_size``)."""
        if self.global_batch_size is None:
            return self.batch_size, self.grad_accum
        share, rest = divmod(self.global_batch_size, num_processes)
        if rest or share == 0:
            counts = [n for n in range(1, self.global_batch_size + 1) if self.global_batch_size % n == 0]
            raise ConfigError(f"train.global_batch_size={self.global_batch_size} does not divide over "
                              f"{num_processes} processes: run on {', '.join(map(str, counts))} processes, or set a "
                              f"multiple of {num_processes}")
        micro = max(d for d in range(1, min(share, self.batch_size) + 1) if share % d == 0)
        return micro, share // micro

    def global_batch(self, num_processes: int) -> int:
        """Images per iteration over ``num_processes`` processes (per data role)."""
        micro, accum = self.per_process(num_processes)
        return micro * accum * num_processes


class EvalConfig(Section):
    """Evaluation settings, also used by ``dasuite eval`` and ``dasuite pseudo-label`` (their ``--mode``, ``--crop``,
    ``--stride``, ``--scales`` and ``--flip`` override them). Scores are computed at the label's resolution before
    argmax; several scales or a flip average class probabilities there (``dasuite/engine/inference.py``)."""

    batch_size: int = Field(2, gt=0)
    """Images per process in an evaluation batch."""
    mode: Literal["whole", "slide"] = "whole"
    """``whole``: each image through the network at once; ``slide``: overlapping ``crop`` windows every ``stride``
    pixels, logits averaged where they overlap (mmseg's sliding-window inference; SegFormer's Cityscapes protocol)."""
    crop: Optional[tuple[int, int]] = None
    """(width, height) of a sliding window, e.g. [1024, 1024] at 2048x1024; required by ``mode: slide``."""
    stride: Optional[tuple[int, int]] = None
    """(width, height) step between windows; null = 3/4 of ``crop`` (SegFormer: 768 for 1024 windows)."""
    window_batch: int = Field(4, gt=0)
    """Windows per network call in sliding mode (fewer: less memory, more calls)."""
    scales: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [1.0], min_length=1)
    """Image scale factors of multi-scale inference, e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]; [1.0] = single scale."""
    flip: bool = False
    """Also run the horizontally flipped image and average the probabilities (flip test-time augmentation)."""
    class_subsets: list[Literal["synthia16", "synthia13"]] = Field(default_factory=list)
    """Extra mIoU summaries over class subsets, reported as ``mIoU_<subset>`` (SYNTHIA -> Cityscapes reports 16- and
    13-class means besides the 19-class one)."""

    @model_validator(mode="after")
    def _windows(self) -> "EvalConfig":
        if self.mode == "slide" and self.crop is None:
            raise ValueError("mode slide needs crop: the (width, height) of a window, e.g. eval.crop=[1024,1024]")
        for key in ("crop", "stride"):
            value = getattr(self, key)
            if value is not None and min(value) <= 0:
                raise ValueError(f"{key} must be (width, height) with positive values, got {list(value)}")
        if self.stride is not None and self.crop is not None and any(s > c for s, c in zip(self.stride, self.crop)):
            raise ValueError(f"stride {list(self.stride)} is larger than crop {list(self.crop)}: windows would leave "
                             f"gaps")
        return self


class LogConfig(Section):
    """Logging: TensorBoard through Accelerate's tracker, prediction grids, progress bar."""

    tensorboard: bool = True
    """Write TensorBoard events (scalars, image grids) through Accelerate's tracker."""
    num_vis_images: int = Field(4, ge=0)
    """Rows of image / ground truth / prediction logged at each validation; 0 = none."""
    progress_bar: bool = True
    """Show tqdm progress bars on the main process."""


class ExperimentConfig(Section):
    """A whole experiment. The run directory is ``<work_dir>/<name>/<tag>``; ``tag`` defaults to ``seed<seed>``
    (``fold<K>_seed<seed>`` when a fold is set)."""

    name: str = "experiment"
    """Experiment name, the first level of the run directory; defaults to the experiment file's stem."""
    seed: int = 0
    """Seeds Python, NumPy and torch on every process (offset by process index) and the data streams."""
    work_dir: str = "runs"
    """Folder that holds the run directories (``--work-dir``)."""
    tag: Optional[str] = None
    """Run tag, the run directory's last level; null = ``seed<seed>`` (``fold<K>_seed<seed>`` with a fold)."""
    data: DataConfig
    """Datasets per role."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The segmentation network."""
    method: MethodSection = Field(default_factory=lambda: METHODS.config("source_only")())
    """The training method; ``name`` selects it and the other keys are the method's own (Methods below)."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimizer of the trained network."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """Learning-rate schedule of ``optim``, stepped once per iteration."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Training loop: length, batch size, intervals, precision."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation settings."""
    log: LogConfig = Field(default_factory=LogConfig)
    """Logging settings."""
    ohem: Optional[OhemConfig] = None
    """Online hard example mining on the shared labelled cross-entropy (``loss_seg``) of every method that computes
    it (UniMatch's Cityscapes recipe: ``{thresh: 0.7, min_kept: 200000}``); null = plain cross-entropy."""
    feature_distance: Optional[FeatureDistanceConfig] = None
    """DAFormer's thing-class ImageNet feature distance on labelled source batches, for every method that computes
    the shared source losses (docs/daformer.md); null = off."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"name must be a plain directory name, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check_milestones(self) -> "ExperimentConfig":
        bad = [m for m in self.schedule.milestones if not 0 < m < self.train.max_iters]
        if bad:
            raise ValueError(f"schedule.milestones {bad} must lie in (0, train.max_iters={self.train.max_iters})")
        return self

    def run_tag(self) -> str:
        """The run's tag: the configured one, else derived from the fold and seed."""
        if self.tag:
            return self.tag
        folds = {getattr(e, "fold", None) for e in self.data.entries().values()} - {None}
        prefix = f"fold{folds.pop()}_" if len(folds) == 1 else ""
        return f"{prefix}seed{self.seed}"
