"""A full-size SegFormer-B0 loads every encoder weight of an NVlabs ``mit_b0.pth``-format checkpoint.

The checkpoint is fabricated here from the published MiT-B0 architecture (depths 2/2/2/2, widths 32/64/160/256,
spatial-reduction ratios 8/4/2/1, patch sizes 7/3/3/3, MLP ratio 4, qkv bias), independently of the converter under
test, with random values; the test then checks tensor by tensor where each one landed (kv split into key/value).
"""

import torch

from dasuite.models import create_model

DIMS, DEPTHS, SR, PATCH = (32, 64, 160, 256), (2, 2, 2, 2), (8, 4, 2, 1), (7, 3, 3, 3)


def fabricated_mit_b0() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    in_ch = 3
    for i, (c, depth, sr, k) in enumerate(zip(DIMS, DEPTHS, SR, PATCH), start=1):
        state |= {f"patch_embed{i}.proj.weight": r(c, in_ch, k, k), f"patch_embed{i}.proj.bias": r(c),
                  f"patch_embed{i}.norm.weight": r(c), f"patch_embed{i}.norm.bias": r(c)}
        for j in range(depth):
            b = f"block{i}.{j}."
            state |= {b + "norm1.weight": r(c), b + "norm1.bias": r(c), b + "attn.q.weight": r(c, c),
                      b + "attn.q.bias": r(c), b + "attn.kv.weight": r(2 * c, c), b + "attn.kv.bias": r(2 * c),
                      b + "attn.proj.weight": r(c, c), b + "attn.proj.bias": r(c), b + "norm2.weight": r(c),
                      b + "norm2.bias": r(c), b + "mlp.fc1.weight": r(4 * c, c), b + "mlp.fc1.bias": r(4 * c),
                      b + "mlp.dwconv.dwconv.weight": r(4 * c, 1, 3, 3), b + "mlp.dwconv.dwconv.bias": r(4 * c),
                      b + "mlp.fc2.weight": r(c, 4 * c), b + "mlp.fc2.bias": r(c)}
            if sr > 1:
                state |= {b + "attn.sr.weight": r(c, c, sr, sr), b + "attn.sr.bias": r(c),
                          b + "attn.norm.weight": r(c), b + "attn.norm.bias": r(c)}
        state |= {f"norm{i}.weight": r(c), f"norm{i}.bias": r(c)}
        in_ch = c
    state |= {"head.weight": r(1000, 256), "head.bias": r(1000)}
    return state


def test_full_size_b0_loads_every_encoder_weight(tmp_path):
    original = fabricated_mit_b0()
    path = tmp_path / "mit_b0.pth"
    torch.save(original, path)
    model = create_model("segformer_b0", 19, pretrained=str(path))
    loaded = model.state_dict()
    encoder = {k: v for k, v in loaded.items() if k.startswith(model.encoder_prefix)}
    # every encoder tensor of the model must equal some checkpoint tensor (or half of a kv tensor)
    pool = [v for k, v in original.items() if not k.startswith("head.") and not k.endswith("attn.kv.weight")
            and not k.endswith("attn.kv.bias")]
    for k, v in original.items():
        if ".attn.kv." in k:
            pool += list(v.chunk(2, dim=0))
    assert sum(v.numel() for v in pool) == sum(v.numel() for v in encoder.values())
    unmatched = [k for k, v in encoder.items() if not any(p.shape == v.shape and torch.equal(p, v) for p in pool)]
    assert not unmatched, unmatched[:5]
    # and the kv split is key first, value second
    kv = original["block1.0.attn.kv.weight"]
    key_names = [k for k, v in encoder.items() if torch.equal(v, kv[:32])]
    value_names = [k for k, v in encoder.items() if torch.equal(v, kv[32:])]
    assert len(key_names) == 1 and ("key" in key_names[0] or "k_proj" in key_names[0]), key_names
    assert len(value_names) == 1 and ("value" in value_names[0] or "v_proj" in value_names[0]), value_names
