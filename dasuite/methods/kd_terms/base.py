"""The contract of a ``distill`` term: a config section, the feature pairs it compares, its projectors and its value.

A term is one module in this package: a config class (a ``Section`` with at least ``weight``) and a ``DistillTerm``
subclass registered with ``@DISTILL_TERMS.register("<key>")``; ``method.<key>: {...}`` then switches it on (null or
absent = off), ``DistillConfig`` gains the key, ``Distill.loss_terms`` the contract-test entry. Like method modules,
term modules import without torch (``dasuite.lazy.lazy_import``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

from dasuite.lazy import lazy_import
from dasuite.registry import DISTILL_TERMS
from dasuite.schema_base import Section

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import nn

torch = lazy_import("torch")
segmentation = lazy_import("dasuite.losses.segmentation")

__all__ = ["DISTILL_TERMS", "DistillTerm", "FeaturePair"]

#: ``channels(side, name)``: the width of feature ``name`` of the ``"student"`` or ``"teacher"`` network.
Channels = Callable[[str, str], int]


class FeaturePair(Section):
    """A student feature and the teacher feature it is distilled from: ``stage1..4``, ``decoder`` or ``logits``."""

    student: str = "decoder"
    """Student tensor: ``stage1``..``stage4`` (encoder stages), ``decoder`` (the classifier's input) or ``logits``."""
    teacher: str = "decoder"
    """Teacher tensor, named the same way."""


class DistillTerm:
    """One term of ``distill``: ``weight * loss(...)`` enters the total and is logged as ``loss_<name>``.

    Class attributes declare it: ``config`` (its section), ``order`` (terms are added in ascending order, then by
    name), ``contract_on``/``reaches`` (``method.<name>: contract_on`` must change the gradient of ``reaches`` in
    ``tests/test_method_contract.py``), ``in_toy_run`` (``contract_on`` is also on in the contract test's toy runs of
    ``distill``, whose resume must be exact: for terms with state), ``projector`` (a 1x1 student -> teacher conv per
    pair whose widths differ, trained with the student) and ``resize_teacher`` (teacher tensors resized bilinearly to
    the student's size).
    The default ``loss`` sums ``pair_loss`` over ``pairs()``; a term with more structure overrides ``loss``,
    ``modules`` (trained layers of its own), ``setup`` and ``state_dict``/``load_state_dict`` (checkpointed state).
    """

    config: ClassVar[type[Section]]
    order: ClassVar[int] = 100
    contract_on: ClassVar[dict[str, Any]] = {"weight": 1.0}
    reaches: ClassVar[tuple[str, ...]] = ("model",)
    in_toy_run: ClassVar[bool] = False
    projector: ClassVar[bool] = False
    resize_teacher: ClassVar[bool] = True

    def __init__(self, name: str, options: Any, num_classes: int) -> None:
        self.name, self.options, self.num_classes = name, options, num_classes

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the class docstring (``DistillConfig``'s description of the key)."""
        return " ".join((cls.__doc__ or "").split("\n\n")[0].split()).rstrip(".")

    def active(self) -> bool:
        """Whether the term contributes (the method skips it otherwise)."""
        return self.options.weight > 0

    def pairs(self) -> list[FeaturePair]:
        """The (student, teacher) tensors compared; default: ``options.pairs``."""
        return list(self.options.pairs)

    def modules(self, channels: Channels) -> dict[str, "nn.Module"]:
        """Trained layers by key (unique across terms; ``loss`` finds them in ``modules``); checks every pair's
        feature names. Default: the 1x1 projectors (key ``<name><pair index>``) of ``projector`` terms."""
        out = {}
        for index, pair in enumerate(self.pairs()):
            c_s, c_t = channels("student", pair.student), channels("teacher", pair.teacher)
            if self.projector and c_s != c_t:
                out[f"{self.name}{index}"] = torch.nn.Conv2d(c_s, c_t, kernel_size=1)
        return out

    def setup(self, accelerator: "Accelerator") -> None:
        """Called once the engine has prepared the modules: place state on ``accelerator.device`` here."""
        self.accelerator = accelerator

    def loss(self, student: dict[str, "torch.Tensor"], teacher: dict[str, "torch.Tensor"], modules: "nn.ModuleDict",
             batch: dict[str, Any], log: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """The unweighted value: ``pair_loss`` summed over the pairs, the student side through its projector when
        it has one (``modules``: every term's trained layers by key); raw parts may be added to ``log``."""
        total = torch.zeros((), device=student["logits"].device)
        for index, pair in enumerate(self.pairs()):
            s, t = student[pair.student], teacher[pair.teacher]
            if f"{self.name}{index}" in modules:
                s = modules[f"{self.name}{index}"](s)
            if self.resize_teacher:
                t = segmentation.upsample_to(t.float(), s.shape[-2:])
            total = total + self.pair_loss(s, t, batch, log)
        return total

    def pair_loss(self, s: "torch.Tensor", t: "torch.Tensor", batch: dict[str, Any],
                  log: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """The term on one pair (student, teacher tensors); a term defines this or overrides ``loss``."""
        raise TypeError(f"distill term {type(self).__name__} ({self.name!r}) defines neither pair_loss nor loss: "
                        f"a DistillTerm subclass must override one of them (docs/extending.md)")

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the method (empty: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
