"""Training-step throughput of :class:`ternref.nn.TransformerLM` against PyTorch CPU (issue 11).

Times one training step (forward, causal LM cross-entropy, backward; no optimizer step) of a
LLaMA-style model: by default 4 layers, width 256, 8 query heads sharing 4 key/value heads,
SwiGLU width 768, byte vocabulary (256), tied embeddings, context 128, batch 16 (2048 tokens a
step). Prints tokens per second (median over the timed steps) and the machine.

When ``torch`` is importable it also builds the same model in PyTorch with the very same weights
(``torch.nn.functional.scaled_dot_product_attention`` with ``enable_gqa``, ``torch.nn.RMSNorm``,
the rotate_half RoPE), checks that the two losses agree to float32 precision, and times its step
the same way; the two are timed alternately, step by step, so that a change in the machine's load
hits both. It prints the ratio of the step times (ternref / PyTorch; the target of issue 11 is at
most 1.5). PyTorch is never a dependency of ternref: install it in a separate environment::

    python -m venv .torchvenv && . .torchvenv/bin/activate
    pip install torch==2.13.0 && pip install --no-deps -e . && pip install numpy numba tqdm

Usage::

    python benchmarks/bench_transformer.py                     # default model, 10 timed steps
    python benchmarks/bench_transformer.py --heads 4 --kv-heads 4 --steps 5
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_transformer.py --threads 1   # one core each
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def machine() -> str:
    from ternref.compare import machine_description

    return f"{machine_description()}, numpy {np.__version__}"


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


def ternref_step(model, loss, ids):
    model.zero_grad()
    value = loss(model(ids[:, :-1]), ids[:, 1:])
    model.backward(loss.backward())
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

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            kv = args.kv_heads * d
            self.attn_norm = nn.RMSNorm(args.dim, eps=1e-5)
            self.q = nn.Linear(args.dim, args.dim, bias=False)
            self.k = nn.Linear(args.dim, kv, bias=False)
            self.v = nn.Linear(args.dim, kv, bias=False)
            self.o = nn.Linear(args.dim, args.dim, bias=False)
            self.ffn_norm = nn.RMSNorm(args.dim, eps=1e-5)
            self.gate = nn.Linear(args.dim, model.ffn_dim, bias=False)
            self.up = nn.Linear(args.dim, model.ffn_dim, bias=False)
            self.down = nn.Linear(model.ffn_dim, args.dim, bias=False)

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
                b.weight.copy_(torch.from_numpy(a.weight.data))
    return net


def torch_step(net, ids):
    import torch
    from torch.nn import functional as F

    net.zero_grad(set_to_none=False)
    logits = net(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
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
    args = parser.parse_args(argv)

    from ternref.nn import LMCrossEntropyLoss

    print(f"machine: {machine()}")
    rng = np.random.default_rng(0)
    model = build_ternref(args, rng)
    loss = LMCrossEntropyLoss()
    ids = rng.integers(0, args.vocab, (args.batch, args.context + 1))
    tokens = args.batch * args.context
    print(
        f"model: {args.layers} layers, width {args.dim}, {args.heads} heads / {args.kv_heads} kv "
        f"heads, ffn {model.ffn_dim}, vocab {args.vocab}, context {args.context}, batch "
        f"{args.batch} ({tokens} tokens per step), {sum(p.data.size for p in model.parameters())}"
        " parameters, float32"
    )
    net = build_torch(model, args)
    ids_t = None
    if net is not None:
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        ids_t = torch.from_numpy(ids)
        ours_loss, their_loss = ternref_step(model, loss, ids), torch_step(net, ids_t)
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
    ours_times, their_times = [], []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        ternref_step(model, loss, ids)
        elapsed = time.perf_counter() - start
        if step >= 2:
            ours_times.append(elapsed)
        if net is not None:
            start = time.perf_counter()
            torch_step(net, ids_t)
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
