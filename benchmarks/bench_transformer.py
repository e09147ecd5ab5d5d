"""Training throughput of :class:`ternref.nn.TransformerLM` against PyTorch CPU (issue 11).

Times one training step of a LLaMA-style model: by default 4 layers, width 256, 8 query heads
sharing 4 key/value heads, SwiGLU width 768, byte vocabulary (256), tied embeddings, context
128, batch 16 (2048 tokens a step). ``--step train`` (the default) is the whole step of
``ternref lm train``: forward, causal LM cross-entropy, backward, global gradient-norm clipping
to 1.0 and the AdamW update (betas 0.9/0.95, decoupled weight decay 0.1 on matrices only);
``--step grad`` stops after the backward. ``--method bitnet`` times BitNet b1.58 (every
projection a BitLinear: SubLN, int8 absmax activations and absmean ternary weights with
straight-through estimators, block norms removed) instead of the float model. Prints tokens
per second (median over the timed steps) and the machine.

When ``torch`` is importable it also builds the same model in PyTorch with the very same weights
(``torch.nn.functional.scaled_dot_product_attention`` with ``enable_gqa``, ``torch.nn.RMSNorm``,
the rotate_half RoPE; for ``bitnet`` the BitLinear of the BitNet FAQ's Figure 3 with the
``detach`` trick), checks that the two losses and a few gradients agree to float32 precision,
and times its step the same way (``torch.optim.AdamW`` and ``clip_grad_norm_`` for
``--step train``); the two are timed alternately, step by step, so that a change in the
machine's load hits both. (For ``bitnet`` the two agree only once
``ternref.projections.bitnet`` uses the reference rule ``W / max(mean|W|, 1e-5)``, as the
PyTorch code here does: with the older ``W / (mean|W| + 1e-5)`` a few codes at the rounding
boundary differ, measured as a relative loss gap of 5e-5 and gradient gaps of 0.1; with the
reference rule patched in, 1e-7 and 5e-7.) It prints the ratio of the step times
(ternref / PyTorch; the target of issue 11 is at most 1.5). PyTorch is never a dependency of
ternref: install it in a separate environment::

    python -m venv .torchvenv && . .torchvenv/bin/activate
    pip install torch==2.13.0 && pip install --no-deps -e . && pip install numpy numba tqdm

Usage::

    python benchmarks/bench_transformer.py                     # default model, 10 timed steps
    python benchmarks/bench_transformer.py --method bitnet
    python benchmarks/bench_transformer.py --heads 4 --kv-heads 4 --steps 5 --step grad
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_transformer.py --threads 1   # one core each
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def machine() -> str:
    from ternref._machine import summary

    return summary()


def build_ternref(args, rng):
    from ternref.nn import TransformerLM

    return TransformerLM(
        args.vocab,
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        ffn_dim=args.ffn,
        max_seq_len=args.context,
        rope_theta=10000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        rng=rng,
    )


def ternref_step(model, loss, ids, optimizer=None):
    """One step; with ``optimizer`` (from ``ternref.lm.adamw``) clip and update as well."""
    model.zero_grad()
    value = loss(model(ids[:, :-1]), ids[:, 1:])
    model.backward(loss.backward())
    if optimizer is not None:
        from ternref.lm import clip_grad_norm

        clip_grad_norm(optimizer.parameters(), 1.0)
        optimizer.step()
    return value


def build_torch(model, args):
    """The same network in PyTorch, holding copies of ``model``'s weights (or None)."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn
    from torch.nn import functional as F

    d = args.dim // args.heads
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(args.context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).float()
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).float()

    def rope(x):  # (B, H, T, d), Hugging Face's rotate_half
        t = x.shape[2]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos[:t] + torch.cat([-x2, x1], dim=-1) * sin[:t]

    bitnet = args.method == "bitnet"

    def activation_quant(x):  # FAQ Figure 3
        scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
        return (x * scale).round().clamp_(-128, 127) / scale

    def weight_quant(w):  # FAQ Figure 3 (the reference rule)
        scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
        return (w * scale).round().clamp_(-1, 1) / scale

    class BitLinear(nn.Linear):
        def __init__(self, n_in, n_out):
            super().__init__(n_in, n_out, bias=False)
            self.norm = nn.RMSNorm(n_in, eps=1e-5)

        def forward(self, x):
            x_norm = self.norm(x)
            x_quant = x_norm + (activation_quant(x_norm) - x_norm).detach()
            w_quant = self.weight + (weight_quant(self.weight) - self.weight).detach()
            return F.linear(x_quant, w_quant)

    def linear(n_in, n_out):
        return BitLinear(n_in, n_out) if bitnet else nn.Linear(n_in, n_out, bias=False)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            kv = args.kv_heads * d
            # BitNet b1.58: the block norms move into every BitLinear (FAQ, step 2)
            self.attn_norm = nn.Identity() if bitnet else nn.RMSNorm(args.dim, eps=1e-5)
            self.q = linear(args.dim, args.dim)
            self.k = linear(args.dim, kv)
            self.v = linear(args.dim, kv)
            self.o = linear(args.dim, args.dim)
            self.ffn_norm = nn.Identity() if bitnet else nn.RMSNorm(args.dim, eps=1e-5)
            self.gate = linear(args.dim, model.ffn_dim)
            self.up = linear(args.dim, model.ffn_dim)
            self.down = linear(model.ffn_dim, args.dim)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.attn_norm(x)
            q = rope(self.q(h).view(b, t, args.heads, d).transpose(1, 2))
            k = rope(self.k(h).view(b, t, args.kv_heads, d).transpose(1, 2))
            v = self.v(h).view(b, t, args.kv_heads, d).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, args.dim))
            h = self.ffn_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(args.vocab, args.dim)
            self.blocks = nn.ModuleList(Block() for _ in range(args.layers))
            self.norm = nn.RMSNorm(args.dim, eps=1e-5)

        def forward(self, ids):
            x = self.embed(ids)
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x) @ self.embed.weight.T  # tied head

    net = LM()
    with torch.no_grad():
        net.embed.weight.copy_(torch.from_numpy(model.token_embd.weight.data))
        net.norm.weight.copy_(torch.from_numpy(model.output_norm.weight.data))
        for ours, theirs in zip(model.blocks, net.blocks):
            pairs = [
                (ours.attn_norm, theirs.attn_norm),
                (ours.attn.q_proj, theirs.q),
                (ours.attn.k_proj, theirs.k),
                (ours.attn.v_proj, theirs.v),
                (ours.attn.o_proj, theirs.o),
                (ours.ffn_norm, theirs.ffn_norm),
                (ours.ffn.gate_proj, theirs.gate),
                (ours.ffn.up_proj, theirs.up),
                (ours.ffn.down_proj, theirs.down),
            ]
            for a, b in pairs:
                if isinstance(b, nn.Identity):
                    continue
                b.weight.copy_(torch.from_numpy(a.weight.data))
                if isinstance(b, BitLinear):
                    b.norm.weight.copy_(torch.from_numpy(a.input_norm.weight.data))
    return net


def torch_optimizer(net):
    """AdamW as ``ternref.lm.adamw``: betas (0.9, 0.95), weight decay 0.1 on matrices only."""
    import torch

    decay = [p for p in net.parameters() if p.ndim >= 2]
    rest = [p for p in net.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": rest, "weight_decay": 0.0}], lr=1e-3,
                             betas=(0.9, 0.95), eps=1e-8)  # fmt: skip


def torch_step(net, ids, optimizer=None):
    import torch
    from torch.nn import functional as F

    net.zero_grad(set_to_none=False)
    logits = net(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    if optimizer is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=None, help="default: LLaMA's rule (768)")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--method", choices=["float", "bitnet"], default="float")
    parser.add_argument("--step", choices=["train", "grad"], default="train",
                        help="train: the whole step with clipping and AdamW (default); grad: "
                        "forward and backward only")  # fmt: skip
    args = parser.parse_args(argv)

    from ternref.nn import LMCrossEntropyLoss

    print(machine())
    rng = np.random.default_rng(0)
    model = build_ternref(args, rng)
    if args.method == "bitnet":
        from ternref import methods

        methods.quantize_model(model, methods.get("bitnet"))
    loss = LMCrossEntropyLoss()
    ids = rng.integers(0, args.vocab, (args.batch, args.context + 1))
    tokens = args.batch * args.context
    print(
        f"model: {args.layers} layers, width {args.dim}, {args.heads} heads / {args.kv_heads} kv "
        f"heads, ffn {model.ffn_dim}, vocab {args.vocab}, context {args.context}, batch "
        f"{args.batch} ({tokens} tokens per step), {sum(p.data.size for p in model.parameters())}"
        f" parameters, float32, {args.method}, step: "
        + ("forward + backward + clip + AdamW" if args.step == "train" else "forward + backward")
    )
    net = build_torch(model, args)
    ids_t = None
    if net is not None:
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        ids_t = torch.from_numpy(ids)
        ours_loss, their_loss = ternref_step(model, loss, ids), torch_step(net, ids_t)
        # (the cross-check runs before any update, on the very same weights)
        agree = abs(ours_loss - their_loss) / abs(their_loss)
        grad_gap = max(
            float(np.abs(ours.grad - theirs.grad.numpy()).max() / np.abs(ours.grad).max())
            for ours, theirs in [
                (model.token_embd.weight, net.embed.weight),
                (model.blocks[0].attn.q_proj.weight, net.blocks[0].q.weight),
                (model.blocks[-1].ffn.down_proj.weight, net.blocks[-1].down.weight),
            ]
        )
        print(
            f"same weights, same batch: loss ternref {ours_loss:.6f}, pytorch {their_loss:.6f} "
            f"(relative gap {agree:.1e}); largest relative gradient gap {grad_gap:.1e}"
        )
    ours_opt = their_opt = None
    if args.step == "train":
        from ternref.lm import adamw

        ours_opt = adamw(model, 1e-3, 0.1)
        their_opt = torch_optimizer(net) if net is not None else None
    ours_times, their_times = [], []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        ternref_step(model, loss, ids, ours_opt)
        elapsed = time.perf_counter() - start
        if step >= 2:
            ours_times.append(elapsed)
        if net is not None:
            start = time.perf_counter()
            torch_step(net, ids_t, their_opt)
            elapsed = time.perf_counter() - start
            if step >= 2:
                their_times.append(elapsed)
    ours = float(np.median(ours_times))
    print(
        f"ternref: median {1e3 * ours:.0f} ms per step over {args.steps} steps, "
        f"{tokens / ours:.0f} tokens/s"
    )
    if net is None:
        print("pytorch: not importable here; see the module docstring for the separate venv")
        return 0
    theirs = float(np.median(their_times))
    print(
        f"pytorch {torch.__version__} ({torch.get_num_threads()} threads): median "
        f"{1e3 * theirs:.0f} ms per step, {tokens / theirs:.0f} tokens/s"
    )
    print(f"ratio ternref/pytorch seconds per step: {ours / theirs:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
