"""CIRKD (``method.cirkd``, ``dasuite.losses.cirkd``): each loss against the formula written out with loops, the queues'
key selection, pointers and wrap-around, the queues gathered over two processes, and a toy run through the CLI that
resumes exactly. The contract test (tests/test_method_contract.py) covers gradients and resume of the term too."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dasuite.fileio import load_torch
from dasuite.losses import cirkd
from dasuite.methods import distill
from tests.conftest import ROOT


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _kl(p_logits: list[float], q_logits: list[float]) -> float:
    """KL(softmax(p) || softmax(q)) by hand."""
    zp, zq = sum(math.exp(x) for x in p_logits), sum(math.exp(x) for x in q_logits)
    return sum(math.exp(a) / zp * ((a - math.log(zp)) - (b - math.log(zq))) for a, b in zip(p_logits, q_logits))


def _minibatch_by_hand(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    batch, _, height, width = s.shape
    pixels = [(y, x) for y in range(height) for x in range(width)]
    total = 0.0
    for i in range(batch):
        for j in range(batch):
            for (y, x) in pixels:
                a_s = [float(_unit(s[i, :, y, x]) @ _unit(s[j, :, v, u])) / tau for (v, u) in pixels]
                a_t = [float(_unit(t[i, :, y, x]) @ _unit(t[j, :, v, u])) / tau for (v, u) in pixels]
                total += _kl(a_t, a_s) / len(pixels)
    return total / batch**2


def test_minibatch_loss_by_hand():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 2, 3, generator=gen), torch.randn(2, 5, 2, 3, generator=gen)  # widths may differ
    assert cirkd.minibatch_loss(s, t, 0.5).item() == pytest.approx(_minibatch_by_hand(s, t, 0.5), rel=1e-5)
    assert cirkd.minibatch_loss(t, t, 0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_minibatch_pool_averages_ceil_windows():
    """pool 2 on 3x3 maps: windows rows/cols {0,1} and {2} (ceil mode), each the mean of the pixels it covers."""
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)

    def pool(x):
        out = torch.zeros(*x.shape[:2], 2, 2)
        for a, rows in enumerate(([0, 1], [2])):
            for b, cols in enumerate(([0, 1], [2])):
                out[:, :, a, b] = x[:, :, rows][:, :, :, cols].mean(dim=(2, 3))
        return out

    expected = _minibatch_by_hand(pool(s), pool(t), 0.1)
    assert cirkd.minibatch_loss(s, t, 0.1, pool=2).item() == pytest.approx(expected, rel=1e-5)


def test_memory_losses_by_hand():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 2, 2, generator=gen), torch.randn(2, 3, 2, 2, generator=gen)
    labels = torch.tensor([[[0, 255], [1, 1]], [[2, 0], [255, 255]]])
    pixel_keys = F.normalize(torch.randn(6, 3, generator=gen), dim=1)
    region_keys = F.normalize(torch.randn(4, 3, generator=gen), dim=1)
    tau, t_kd = 0.2, 2.0
    got = cirkd.memory_losses(s, t, labels, pixel_keys, region_keys, tau, t_kd)
    for keys, value in zip((pixel_keys, region_keys), got):
        terms = []
        for b in range(2):
            for y in range(2):
                for x in range(2):
                    if labels[b, y, x] == 255:
                        continue
                    z_s = [float(_unit(s[b, :, y, x]) @ k) / tau / t_kd for k in keys]
                    z_t = [float(_unit(t[b, :, y, x]) @ k) / tau / t_kd for k in keys]
                    terms.append(_kl(z_t, z_s))
        assert value.item() == pytest.approx(t_kd**2 * sum(terms) / len(terms), rel=1e-5)
    # no labelled pixel: 0, still differentiable
    s.requires_grad_(True)
    zero = cirkd.memory_losses(s, t, torch.full_like(labels, 255), pixel_keys, region_keys)[0]
    zero.backward()
    assert zero.item() == 0.0 and s.grad is not None


def test_losses_compute_in_float32_under_autocast():
    gen = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 6, 4, 5, generator=gen)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    keys = F.normalize(torch.randn(7, 6, generator=gen), dim=1)
    plain = (cirkd.minibatch_loss(s, t), *cirkd.memory_losses(t, t * 2, labels, keys, keys))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (cirkd.minibatch_loss(s, t), *cirkd.memory_losses(t, t * 2, labels, keys, keys))
    assert all(a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-6) for a, b in zip(plain, mixed))


@pytest.mark.parametrize("pixels_from", ["class", "cirkd_code"])
def test_select_keys(pixels_from):
    gen = torch.Generator().manual_seed(3)
    teacher = F.normalize(torch.randn(2, 4, 3, 4, generator=gen), dim=1)
    labels = torch.randint(0, 3, (2, 3, 4), generator=gen)
    labels[0, 0] = 255
    labels[1] = torch.where(labels[1] == 2, 0, labels[1])  # class 2 absent from image 1
    torch.manual_seed(0)
    keys = cirkd.select_keys(teacher, labels, 3, pixels_per_image=3, pixels_from=pixels_from)
    pixels = teacher.flatten(2).transpose(1, 2)  # B x P x D
    flat = labels.flatten(1)
    for b in range(2):
        for c in range(3):
            members = [p for p in range(12) if flat[b, p] == c]
            assert keys["taken"][b, c] == min(len(members), 3)
            if not members:
                continue
            mean = sum(pixels[b, p] for p in members) / len(members)
            assert torch.allclose(keys["region"][b, c], _unit(mean), atol=1e-6)
            pool = members if pixels_from == "class" else list(range(len(members)))  # CIRKD's code: a prefix
            rows = keys["pixel"][b, c, :keys["taken"][b, c]]
            chosen = [min(pool, key=lambda p: (pixels[b, p] - row).abs().max().item()) for row in rows]
            assert len(set(chosen)) == len(chosen)
            assert all(torch.allclose(rows[i], pixels[b, p], atol=1e-6) for i, p in enumerate(chosen))


def _keys(region: list[list[float]], pixel: list[list[list[float]]], taken: list[list[int]]) -> dict:
    """Hand-made ``select_keys`` output with 1-d keys (D = 1): region B x K, pixel B x K x m."""
    return {"region": torch.tensor(region, dtype=torch.float)[..., None],
            "pixel": torch.tensor(pixel, dtype=torch.float)[..., None],
            "taken": torch.tensor(taken)}


def test_enqueue_pointers_wrap_and_overwrite_the_oldest():
    """2 classes, pixel queues of 5, region queues of 2, 2 pixels per image; three images of class 0 only."""
    pixel_q, region_q = torch.zeros(2 * 5 + 1, 1), torch.zeros(2 * 2 + 1, 1)
    pixel_ptr, region_ptr = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    keys = _keys(region=[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]],
                 pixel=[[[11, 12], [0, 0]], [[21, 22], [0, 0]], [[31, 32], [0, 0]]],
                 taken=[[2, 0], [2, 0], [2, 0]])
    cirkd.enqueue(pixel_q, pixel_ptr, region_q, region_ptr, keys)
    # pixels: slots 0-1, 2-3, then 4 + 2 >= 5: the last two slots (3-4), pointer back to 0 (CIRKD's rule)
    assert pixel_q[:5, 0].tolist() == [11, 12, 21, 31, 32] and pixel_ptr.tolist() == [0, 0]
    # regions: 0, 1, then the oldest (0) is overwritten; pointer 1
    assert region_q[:2, 0].tolist() == [3.0, 2.0] and region_ptr.tolist() == [1, 0]
    assert (pixel_q[5:10] == 0).all() and (region_q[2:4] == 0).all()  # class 1 absent: untouched
    # one key (taken 1) at pointer 0, then ordinary advance; class 1 from 0
    cirkd.enqueue(pixel_q, pixel_ptr, region_q, region_ptr,
                  _keys(region=[[4.0, 5.0]], pixel=[[[41, 0], [51, 52]]], taken=[[1, 2]]))
    assert pixel_q[:5, 0].tolist() == [41, 12, 21, 31, 32] and pixel_ptr.tolist() == [1, 2]
    assert pixel_q[5:7, 0].tolist() == [51, 52] and region_q[:4, 0].tolist() == [3.0, 4.0, 5.0, 0.0]
    assert region_ptr.tolist() == [0, 1]


def test_term_state_round_trips_and_refuses_other_sizes(tmp_path):
    from dasuite.errors import DasuiteError
    from dasuite.methods.kd_terms.cirkd import CIRKD, CIRKDConfig

    def term(**options):
        t = CIRKD("cirkd", CIRKDConfig(**options), num_classes=3)
        assert set(t.modules(lambda side, name: 4 if side == "student" else 6)) == {"cirkd_embed"}
        return t

    a, b = term(pixel_queue=20, region_queue=4), term(pixel_queue=20, region_queue=4)
    state = a.state_dict()
    assert state["pixel_queue"].shape == (3, 20, 6) and state["region_queue"].shape == (3, 4, 6)
    assert torch.allclose(state["pixel_queue"].norm(dim=-1), torch.ones(3, 20))  # unit-norm start
    assert torch.equal(state["pixel_queue"], b.state_dict()["pixel_queue"])  # fixed seed: same on every process
    modified = {k: v + 1 for k, v in state.items()}
    b.load_state_dict(modified)
    assert all(torch.equal(b.state_dict()[k], modified[k]) for k in state)
    with pytest.raises(DasuiteError, match="pixel_queue"):
        term(pixel_queue=30, region_queue=4).load_state_dict(state)
    # minibatch part only: no head, no queues, no state
    only = CIRKD("cirkd", CIRKDConfig(pixel_weight=0, region_weight=0), 3)
    assert only.modules(lambda side, name: 4) == {} and only.state_dict() == {}


GATHER_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {root!r})
from accelerate import Accelerator
from dasuite.methods.kd_terms.cirkd import CIRKD, CIRKDConfig
acc = Accelerator(cpu=True)
rank = acc.process_index
term = CIRKD("cirkd", CIRKDConfig(pixel_queue=32, region_queue=4), num_classes=2)
term.modules(lambda side, name: 3)
term.setup(acc)
feats = torch.zeros(1, 3, 2, 2)
feats[:, rank] = 1.0                      # process r's keys are the unit vector e_r
labels = torch.zeros(1, 2, 2, dtype=torch.long)
term.enqueue(__import__("dasuite.losses.cirkd", fromlist=["x"]).select_keys(feats, labels, 2, 16))
state = {{k: v.clone() for k, v in term.state_dict().items()}}
torch.save(state, os.path.join({out!r}, f"rank{{rank}}.pt"))
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # a live gloo group at interpreter exit can abort ("terminate called ...")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_gather_keys_and_hold_identical_queues(tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo, CPU): each process enqueues its own keys (e_0 resp. e_1); afterwards
    both hold the same queues, with process 0's keys first, then process 1's."""
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT.format(root=str(ROOT), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
                f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(torchrun, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    e0, e1 = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    # class 0: 4 pixels per image (taken 4 each): rows 0-3 from process 0, 4-7 from process 1; region: e0 then e1
    assert all(torch.equal(a["pixel_queue"][0, i], e0) for i in range(4))
    assert all(torch.equal(a["pixel_queue"][0, i], e1) for i in range(4, 8))
    assert torch.equal(a["region_queue"][0, 0], e0) and torch.equal(a["region_queue"][0, 1], e1)
    assert a["pixel_ptr"].tolist() == [8, 0] and a["region_ptr"].tolist() == [2, 0]


def _cli(work: Path, *overrides: str, processes: int = 1, resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "1"}
    teacher = work.parent / "teacher.safetensors"
    if not teacher.is_file():
        from safetensors.torch import save_file

        from dasuite.models import create_model

        torch.manual_seed(0)
        save_file(create_model("segformer_b2", 19, tiny=True).state_dict(), str(teacher))
    cmd = [sys.executable, "-m", "dasuite"] if processes == 1 else [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(processes),
        f"--master_port={_free_port()}", "-m", "dasuite"]
    args = [*cmd, "run", str(ROOT / "experiments" / "kd" / "toy_b2_to_b0.yaml"), f"work_dir={work}",
            f"method.teacher={{checkpoint: {teacher}, arch: segformer_b2, tiny: true}}", "method.freq=null",
            "method.cirkd={pixel_queue: 64, region_queue: 8}", "train.global_batch_size=4", "train.batch_size=2",
            "train.checkpoint_interval=2", "train.eval_interval=2", "train.log_interval=1", "schedule={name: constant}",
            "data.num_workers=0", "eval.batch_size=2", "data.source.size=[64,48]", "data.source.num_images=8",
            "data.source.augment.crop=[48,48]", "data.val=null", "data.test=null", "log.progress_bar=false",
            "log.num_vis_images=0",
            "log.tensorboard=false", *overrides, *(["--resume"] if resume else [])]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def test_cli_toy_run_resumes_exactly(tmp_path):
    """``python -m dasuite run`` with ``method.cirkd``: 2 iterations, then ``--resume`` to 4, equals 4 at once
    (weights, embedding head, queues and pointers; a constant learning rate, so the schedules agree)."""
    full = _cli(tmp_path / "full", "train.max_iters=4")
    assert full.returncode == 0, full.stderr[-3000:]
    cut = _cli(tmp_path / "cut", "train.max_iters=2")
    assert cut.returncode == 0, cut.stderr[-3000:]
    resumed = _cli(tmp_path / "cut", "train.max_iters=4", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (load_torch(work / "kd_toy_b2_to_b0" / "seed0" / "checkpoints" / "last.pt")
            for work in (tmp_path / "full", tmp_path / "cut"))
    assert a["iteration"] == b["iteration"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert set(a["extras"]["projectors"]) >= {"cirkd_embed.0.weight", "cirkd_embed.1.running_mean"}
    assert all(torch.equal(a["extras"]["projectors"][k], b["extras"]["projectors"][k]) for k in a["extras"]["projectors"])
    queues = a["method"]["terms"]["cirkd"]
    assert queues["pixel_queue"].shape == (19, 64, 64) and queues["pixel_ptr"].sum() > 0
    assert all(torch.equal(queues[k], b["method"]["terms"]["cirkd"][k]) for k in queues)


@pytest.mark.slow
def test_cli_two_processes_train_the_embedding_head_under_ddp(tmp_path):
    """``torchrun --nproc_per_node 2``: the bank of the terms' layers (the embedding head) is prepared, i.e. wrapped
    in DistributedDataParallel, and called once per step; the run finishes and checkpoints the queues."""
    two = _cli(tmp_path, "train.max_iters=2", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    state = load_torch(tmp_path / "kd_toy_b2_to_b0" / "seed0" / "checkpoints" / "last.pt")
    assert state["batch"]["processes"] == 2
    assert state["method"]["terms"]["cirkd"]["region_ptr"].sum() > 0


def test_experiment_file_validates():
    from dasuite.config import load_config

    cfg = load_config(ROOT / "experiments" / "kd" / "camvid_small_b2_to_b0_cirkd.yaml")
    assert isinstance(cfg.method, distill.DistillConfig) and cfg.method.cirkd is not None
    assert cfg.method.kl is not None


def test_a_term_without_pair_loss_or_loss_is_a_clear_error():
    from dasuite.methods.kd_terms.base import DistillTerm

    class Bare(DistillTerm):
        pass

    with pytest.raises(TypeError, match="defines neither pair_loss nor loss"):
        Bare("bare", None, 2).pair_loss(torch.zeros(1), torch.zeros(1), {}, {})
