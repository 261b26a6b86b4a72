"""THE training loop: one Accelerate loop, iteration-based, shared by every method.

Per iteration: draw a batch per domain the method uses, augment it on the device, ``method.training_step`` ->
losses, backward of ``losses["loss"]`` (gradient accumulation and mixed precision through Accelerate), optimizer
and schedule step, ``method.on_step_end``. Every ``log_interval``: scalar logging and the non-finite check; every
``eval_interval``: validation, best checkpoint; every ``checkpoint_interval``: ``last`` checkpoint.
Losses are accumulated on the device and read back only at log/eval/checkpoint time (no per-step host sync).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm

from dasuite.config.load import flatten_config
from dasuite.config.schema import ExperimentConfig
from dasuite.data import build_dataset
from dasuite.data.augment import DeviceAugment
from dasuite.data.check import require_labels
from dasuite.data.fda import apply_fda, fda_roles
from dasuite.data.training import build_training_data, write_run_files
from dasuite.engine.accelerator import make_accelerator
from dasuite.engine.checkpoint import rng_state, set_rng_state
from dasuite.engine.evaluate import evaluate
from dasuite.engine.optim import build_optimizer
from dasuite.errors import DasuiteError, DiskFullError
from dasuite.fileio import (load_torch, load_weights, read_weights_metadata, remove_stale_temps, save_torch,
                            save_weights, write_json)
from dasuite.methods import METHODS
from dasuite.models.weights import load_model_weights
from dasuite.rundir import RunDir
from dasuite.schedule import build_scheduler


EVAL_ROLES = ("val", "test")
logger = logging.getLogger(__name__)


def build_datasets(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every configured role: training roles as ``TrainingData`` (mixes, subsets, rare-class sampling; see
    dasuite/data/training.py), evaluation roles with full-resolution labels; one class table for all."""
    d = cfg.data
    datasets = {role: build_dataset(entry, d.resize, resize_labels=False) if role in EVAL_ROLES
                else build_training_data(role, entry, d.resize, d.num_workers)
                for role in ("source", "target", *EVAL_ROLES) if (entry := getattr(d, role)) is not None}
    counts = {role: ds.num_classes for role, ds in datasets.items()}
    if len(set(counts.values())) > 1:
        raise DasuiteError(f"data roles disagree on the number of classes: {counts}")
    return datasets


def check_labels(datasets: dict[str, Any]) -> None:
    """Every labelled role (each member of a mix) has label pixels that are not ignore (``require_labels``)."""
    for role, data in datasets.items():
        members = getattr(data, "members", None)
        for where, dataset in ([(f"data.{m.path}", m.dataset) for m in members] if members else
                               [(f"data.{role}", data)]):
            require_labels(dataset, where)


def limit_cpu_threads(device: torch.device, num_workers: int) -> None:
    """On the CPU, give torch the cores the loader workers leave free (at least one), unless OMP_NUM_THREADS is set:
    oversubscribed intra-op threads make small-model CPU steps many times slower."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - num_workers))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
CPU_HEAP_KEEP = 1 << 30        # free heap top kept for reuse instead of returned to the OS
CPU_MMAP_THRESHOLD = 64 << 20  # allocations above this get their own mapping (glibc's dynamic default tops at 32 MiB)


def keep_cpu_heap(device: torch.device) -> bool:
    """On the CPU with glibc, stop malloc from returning the freed top of the heap to the OS after every step.

    With the default dynamic thresholds glibc trims the heap whenever a step's temporaries at its top are freed, and
    the next step faults the same pages back in: measured on the toy benchmark (tiny SegFormer-B0, batch 8), ~4,500
    extra page faults and ~20 ms of system time per step (docs/benchmarks.md, "Engine overhead (user's view)").
    Fixed thresholds (``CPU_HEAP_KEEP``, ``CPU_MMAP_THRESHOLD``) keep those pages; the peak is unchanged. Skipped
    when the user tunes malloc (``MALLOC_*`` variables, a preloaded allocator) or off glibc. Returns whether set.
    """
    import ctypes
    import platform

    if device.type != "cpu" or platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ:
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, CPU_HEAP_KEEP))


def sync_batchnorm(module: torch.nn.Module, num_processes: int, device_type: str) -> torch.nn.Module:
    """``module`` with its trainable BatchNorm layers as SyncBatchNorm when several GPU processes train (batch
    statistics over the global batch). Frozen BatchNorm (torchvision's ``FrozenBatchNorm2d``) is another class and
    stays; one process, or CPU processes (SyncBatchNorm runs on GPUs only), leave ``module`` as it is."""
    if num_processes == 1 or device_type == "cpu":
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def compile_plugin(train: Any) -> dict[str, Any]:
    """``make_accelerator`` keyword for ``train.compile``: Accelerate compiles every module it prepares (the network
    and the method's extra trained modules) with this backend and mode; nothing when compile is off (Accelerate's
    own ``--dynamo_backend`` / config then decide, as for any Accelerate program)."""
    if not train.compile:
        return {}
    return {"dynamo_plugin": TorchDynamoPlugin(backend=train.compile_backend, mode=train.compile_mode)}


class Trainer:
    """Builds everything a run needs from the config, then ``fit()`` runs the loop."""

    def __init__(self, cfg: ExperimentConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.run = RunDir.for_config(cfg)
        evaluated = [role for role in EVAL_ROLES if getattr(cfg.data, role) is not None]
        if evaluated and not METHODS.get(cfg.method.name).evaluates:
            raise DasuiteError(f"method {cfg.method.name!r} trains no segmentation model and evaluates nothing, but "
                               f"the experiment sets data.{evaluated[0]}: remove data.{'/'.join(evaluated)}")
        if not resume and self.run.last.exists():
            raise DasuiteError(f"run directory {str(self.run.root)!r} already has a checkpoint; pass --resume to "
                               f"continue it, or choose another tag/work dir (tag=..., --work-dir)")
        self.accelerator = make_accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            log_with="tensorboard" if cfg.log.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.run.root), logging_dir=str(self.run.root)),
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=METHODS.get(cfg.method.name).find_unused_parameters)],
            **compile_plugin(cfg.train),
        )
        acc = self.accelerator
        self.micro_batch, self.grad_accum = cfg.train.per_process(acc.num_processes)
        acc.gradient_accumulation_steps = self.grad_accum
        self.global_batch = self.micro_batch * self.grad_accum * acc.num_processes
        if acc.is_main_process:
            logger.info("global batch %d = %d process(es) x micro-batch %d x %d accumulation step(s)",
                        self.global_batch, acc.num_processes, self.micro_batch, self.grad_accum)
        set_seed(cfg.seed, device_specific=True)
        limit_cpu_threads(self.accelerator.device, cfg.data.num_workers)
        keep_cpu_heap(self.accelerator.device)
        if self.accelerator.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        with self.accelerator.main_process_first():  # class statistics are computed (and cached) once
            self.datasets = build_datasets(cfg)
            check_labels(self.datasets)
        self.classes = self.datasets["source"].classes
        self.method = METHODS.get(cfg.method.name)(cfg, self.classes.num_classes)
        self.extras = self.method.extra_modules()
        missing = [role for role in self.method.domains if role not in self.datasets]
        if missing:
            raise DasuiteError(f"method {cfg.method.name!r} needs data.{missing[0]}, which the experiment does not set")
        if cfg.train.init_from and not resume:
            load_model_weights(self.method.model, cfg.train.init_from, "--init-from")
        if cfg.train.grad_checkpointing:
            self.method.model.set_grad_checkpointing(True)
        if cfg.model.sync_bn:
            self._sync_batchnorm()
        if cfg.train.channels_last:
            for module in (self.method.model, *[getattr(self.method, n) for n in self.extras]):
                module.to(memory_format=torch.channels_last)
        head = getattr(self.method.model, "head_prefixes", ())
        lr_scale = self.global_batch / cfg.optim.lr_reference_batch if cfg.optim.lr_reference_batch else 1.0
        optimizer = build_optimizer(self.method.model, cfg.optim, head, [getattr(self.method, n) for n in self.extras],
                                    lr_scale=lr_scale)
        self.scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_iters)
        prepared = self.accelerator.prepare(self.method.model, *[getattr(self.method, n) for n in self.extras], optimizer)
        self.method.model, self.optimizer = prepared[0], prepared[-1]
        for name, module in zip(self.extras, prepared[1:-1]):
            setattr(self.method, name, module)
        self.method.setup(self.accelerator)
        roles = fda_roles(self.method.domains, cfg.data.fda)  # data.fda also draws target batches
        self.loaders = {role: self.datasets[role].loader(self.micro_batch, cfg.data.num_workers, cfg.seed,
                                                         acc.process_index, acc.num_processes)
                        for role in roles}
        self.augments = {role: DeviceAugment(self.datasets[role].augment) for role in roles}
        if acc.is_main_process:  # subset lists and rare-class tables of the roles this run trains on
            write_run_files(self.run.root, {k: v for role in roles
                                            for k, v in self.datasets[role].run_files().items()}, resume)
        self.iteration = 0
        self.best: Optional[dict] = None
        self.final: Optional[dict] = None
        if resume:
            self._load_last()

    def _sync_batchnorm(self) -> None:
        """``model.sync_bn`` for the network and the method's extra trained modules (``sync_batchnorm``)."""
        acc = self.accelerator
        if acc.num_processes > 1 and acc.device.type == "cpu" and acc.is_main_process:
            logger.warning("model.sync_bn: SyncBatchNorm runs on GPUs only; the %d CPU processes normalise with "
                           "their own batch statistics", acc.num_processes)
        self.method.model = sync_batchnorm(self.method.model, acc.num_processes, acc.device.type)
        for name in self.extras:
            setattr(self.method, name, sync_batchnorm(getattr(self.method, name), acc.num_processes, acc.device.type))

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _save_last(self) -> None:
        """``last.pt``, one atomic file holding everything a resume needs, every process's RNG state included."""
        acc = self.accelerator
        rng = [rng_state()]
        if acc.num_processes > 1:
            rng = [None] * acc.num_processes
            torch.distributed.all_gather_object(rng, rng_state())
        if acc.is_main_process:
            self._write(save_torch, {
                "model": acc.unwrap_model(self.method.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "method": self.method.state_dict(),
                "extras": {n: acc.unwrap_model(getattr(self.method, n)).state_dict() for n in self.extras},
                "loaders": {role: loader.state_dict() for role, loader in self.loaders.items()},
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,  # fp16 loss scale
                "iteration": self.iteration,
                "batch": {"processes": acc.num_processes, "micro_batch": self.micro_batch,
                          "grad_accum": self.grad_accum},
                "best": self.best,
                "final": self.final,
                "rng": rng,
            }, self.run.last)
            for rank in range(acc.num_processes):  # RNG files of runs written before the states moved in
                self.run.legacy_rng(rank).unlink(missing_ok=True)
        acc.wait_for_everyone()

    def _write(self, save: Any, obj: Any, path: Any) -> None:
        """``save(obj, path)``; a full disk names the last good checkpoint (the write itself leaves nothing)."""
        try:
            save(obj, path)
        except DiskFullError as err:
            raise DiskFullError(f"{err}; training stopped at iteration {self.iteration}. {self._last_good()}") from None

    def _last_good(self) -> str:
        if not self.run.last.exists():
            return "No checkpoint was written yet."
        return (f"The last good checkpoint is {self.run.last} (iteration {load_torch(self.run.last)['iteration']}): "
                f"free some space and continue with --resume.")

    def _load_last(self) -> None:
        if not self.run.last.exists():
            raise DasuiteError(f"--resume: no checkpoint at {str(self.run.last)!r}")
        state = load_torch(self.run.last)
        self._check_batch(state)
        self.accelerator.unwrap_model(self.method.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        for name in self.extras:
            self.accelerator.unwrap_model(getattr(self.method, name)).load_state_dict(state["extras"][name])
        for role, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][role])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best, self.final = state["iteration"], state["best"], state["final"]
        set_rng_state(self._rng_of(state))

    def _rng_of(self, state: dict) -> dict:
        """This process's RNG state from ``last.pt`` (or, for older runs, its ``last.rng<k>.pt``)."""
        acc = self.accelerator
        states = state.get("rng")
        if states is None:
            legacy = self.run.legacy_rng(acc.process_index)
            if not legacy.is_file():
                raise DasuiteError(f"--resume: {self.run.last} holds no RNG states and {legacy} is missing")
            return load_torch(legacy)
        return states[acc.process_index % len(states)]

    def _check_batch(self, state: dict) -> None:
        """``--resume`` continues only with the global batch that wrote ``last.pt`` (processes x micro-batch x
        accumulation; older checkpoints: their loaders' batch size and RNG states, ``train.grad_accum``). With the
        same global batch on another number of processes it continues from the same iteration, data position and
        learning rate, but not bit-identically: random draws and BatchNorm statistics follow the new split."""
        acc = self.accelerator
        saved = state.get("batch")
        if saved is None:
            loaders = list(state.get("loaders", {}).values())
            saved = {"processes": len(state.get("rng") or [None]),
                     "micro_batch": loaders[0]["batch_size"] if loaders else self.micro_batch,
                     "grad_accum": self.cfg.train.grad_accum}
        then = saved["processes"] * saved["micro_batch"] * saved["grad_accum"]
        if then != self.global_batch:
            hint = (f"set train.global_batch_size={then}" if then % acc.num_processes == 0
                    else f"resume with {saved['processes']} processes")
            raise DasuiteError(
                f"--resume: {self.run.last} was written with a global batch of {then} ({saved['processes']} "
                f"process(es) x {saved['micro_batch']} x {saved['grad_accum']} accumulation) but this run's is "
                f"{self.global_batch} ({acc.num_processes} x {self.micro_batch} x {self.grad_accum}): {hint} "
                f"(docs/cli.md, 'Several processes')")
        if saved["processes"] != acc.num_processes and acc.is_main_process:
            logger.warning("--resume: %s was written by %d process(es), this run has %d: same iteration, data "
                           "position, global batch %d and learning rate; random draws and BatchNorm statistics "
                           "follow the new split, so it is not bit-identical to an uninterrupted run",
                           self.run.last, saved["processes"], acc.num_processes, self.global_batch)

    # ---------------------------------------------------------------------------------------------------- eval
    def _evaluate(self, role: str, vis: int = 0) -> tuple[dict, Optional[torch.Tensor]]:
        model = self.accelerator.unwrap_model(self.method.eval_model())
        return evaluate(model, self.datasets[role], self.accelerator, self.classes, inference=self.cfg.eval,
                        batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.data.num_workers,
                        num_vis=vis, progress=self.cfg.log.progress_bar, desc=role,
                        class_subsets=tuple(self.cfg.eval.class_subsets))

    def _validate(self) -> None:
        acc, it = self.accelerator, self.iteration
        result, grid = self._evaluate("val", self.cfg.log.num_vis_images)
        self.final = {"iteration": it, **result}
        value = result[self.cfg.train.best_metric]
        improved = value is not None and (self.best is None or value > self.best[self.cfg.train.best_metric])
        if improved:
            self.best = {"iteration": it, **result}
        if acc.is_main_process:
            self.run.append_metrics({"iteration": it, "split": "val", **result})
            if improved:  # the metadata keeps the weights and what they scored in one atomic file
                self._write(lambda state, path: save_weights(state, path, {"best": self.best}),
                            acc.unwrap_model(self.method.eval_model()).state_dict(), self.run.best)
                write_json(self.best, self.run.best_info)
        scalars = {f"val/{k}": v for k, v in result.items() if isinstance(v, (int, float)) and v is not None}
        scalars.update({f"val_iou/{name}": v for name, v in result["iou"].items() if v is not None})
        acc.log(scalars, step=it)
        if grid is not None and self.cfg.log.tensorboard:
            acc.get_tracker("tensorboard", unwrap=True).add_image("val/image_gt_prediction", grid, it)

    # ---------------------------------------------------------------------------------------------------- loop
    def _next_batches(self) -> dict[str, dict]:
        batches = {}
        for role, loader in self.loaders.items():
            raw = next(loader)
            image = raw["image"].to(self.accelerator.device, non_blocking=True)
            label = raw.get("label")
            label = label.to(self.accelerator.device, non_blocking=True) if label is not None else None
            batch = {**{k: v.to(self.accelerator.device, non_blocking=True) for k, v in raw.items()
                        if k not in ("image", "label", "name")},  # maps the loader drew with its crop
                     **self.augments[role].batch(image, label)}
            if self.cfg.train.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            batches[role] = {**batch, "name": raw["name"]}
        return apply_fda(batches, self.cfg.data.fda, self.method.domains)  # identity without data.fda

    def fit(self) -> dict:
        """Train to ``train.max_iters`` (from the resumed iteration), then write ``summary.json``."""
        cfg, acc, tcfg = self.cfg, self.accelerator, self.cfg.train
        if acc.is_main_process:
            self.run.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.run.root, recursive=True)  # temp files of writes a kill interrupted
            if self.run.best.is_file():  # best.json follows the weights' own metadata (a kill between the writes)
                best = read_weights_metadata(self.run.best).get("best")
                if best is not None:
                    write_json(best, self.run.best_info)
            self.run.write_config(cfg)
            self.run.truncate_metrics(self.iteration)
        acc.init_trackers("tensorboard", config=flatten_config(cfg))
        model = self.method.model
        trained = [model, *(getattr(self.method, n) for n in self.extras)]
        for module in trained:
            module.train()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        bad = torch.zeros((), dtype=torch.bool, device=acc.device)
        bar = tqdm(total=tcfg.max_iters, initial=self.iteration, desc=cfg.name, dynamic_ncols=True,
                   disable=not (cfg.log.progress_bar and acc.is_main_process))
        while self.iteration < tcfg.max_iters:
            for _ in range(self.grad_accum):
                with acc.accumulate(*trained):
                    losses = self.method.training_step(self._next_batches(), self.iteration)
                    acc.backward(losses["loss"])
                    if cfg.optim.grad_clip and acc.sync_gradients:
                        acc.clip_grad_norm_([p for m in trained for p in m.parameters()], cfg.optim.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for name, value in losses.items():
                    value = value.detach().float()
                    bad |= ~torch.isfinite(value)
                    sums[name] = sums.get(name, 0) + value
                count += 1
            self.scheduler.step()
            self.method.on_step_end(self.iteration)
            self.iteration += 1
            bar.update(1)
            it = self.iteration
            done = it == tcfg.max_iters
            if it % tcfg.log_interval == 0 or done:
                self._check_finite(bad, sums, count)
                scalars = {f"train/{k}": (v / count).item() for k, v in sums.items()}
                scalars.update({f"train/lr_{g['group']}": g["lr"] for g in self.optimizer.param_groups})
                acc.log(scalars, step=it)
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}")
                sums, count = {}, 0
            if "val" in self.datasets and (it % tcfg.eval_interval == 0 or done):
                self._validate()
            if it % tcfg.checkpoint_interval == 0 or done:
                self._check_finite(bad, sums, max(count, 1))
                self._save_last()
        bar.close()
        summary = self._finish()
        acc.end_training()
        return summary

    def _check_finite(self, bad: torch.Tensor, sums: dict[str, torch.Tensor], count: int) -> None:
        if bool(bad):
            detail = ", ".join(f"{k}={(v / count).item():.4g}" for k, v in sums.items())
            last = f"{self.run.last} (iteration {load_torch(self.run.last)['iteration']})" if self.run.last.exists() else "none yet"
            raise DasuiteError(f"non-finite loss before iteration {self.iteration} ({detail}); training stopped. "
                               f"Last good checkpoint: {last}. Try a lower optim.lr or train.mixed_precision=no.")

    def _finish(self) -> dict:
        """Evaluate the best weights on the test split (when configured) and write ``summary.json``."""
        evaluated = self.method.eval_model_name() if self.method.evaluates else None  # None: nothing evaluated
        summary: dict[str, Any] = {"experiment": self.cfg.name, "tag": self.cfg.run_tag(), "eval_model": evaluated,
                                   "final": self.final, "best": self.best}
        if "test" in self.datasets:
            model = self.accelerator.unwrap_model(self.method.eval_model())
            if self.best is not None and self.run.best.exists():
                current = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(load_weights(self.run.best))
                result, _ = self._evaluate("test")
                model.load_state_dict(current)
                summary["test"] = {"iteration": self.best["iteration"], **result}
            else:
                result, _ = self._evaluate("test")
                summary["test"] = {"iteration": self.iteration, **result}
        if self.accelerator.is_main_process:
            self.run.write_summary(summary)
        self.accelerator.wait_for_everyone()
        return summary


def train(cfg: ExperimentConfig, resume: bool = False) -> dict:
    """Run an experiment end to end; returns the summary written to ``summary.json``."""
    return Trainer(cfg, resume=resume).fit()
