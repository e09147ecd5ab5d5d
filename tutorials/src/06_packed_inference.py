# %% [markdown]
# # 6. Packed inference: ternary weights in 2 bits (and 1.6)
#
# A ternary weight carries log2(3) = 1.58 bits of information, but a float32 array spends 32
# bits on it. This notebook packs ternary codes the way inference engines do, first **by hand
# with NumPy bit operations**, then with `ternref.packed.pack`, checks the two byte for byte,
# runs ternref's kernels against the dense product, and measures memory and speed.
#
# Formats (each documented to the bit in its module docstring):
#
# * [`packed/i2.py`](../ternref/packed/i2.py): 2 bits per weight, code `c + 1`, four
#   interleaved 32-weight sub-blocks per 128-weight block (llama.cpp TQ2_0 order);
# * [`packed/tq1.py`](../ternref/packed/tq1.py): base 3, five trits per byte (1.6 bits),
#   decoded with multiplications only (llama.cpp TQ1_0's trick);
# * [`packed/bitplanes.py`](../ternref/packed/bitplanes.py): two bit masks, `pos` and `neg`.
#
# [`packed/packed.py`](../ternref/packed/packed.py) holds `pack`/`unpack` and the row/group
# padding; [`packed/kernels.py`](../ternref/packed/kernels.py) holds `linear(x, p)`.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from ternref import Ternary, projections
from ternref._machine import summary
from ternref.packed import get_num_threads, i2, linear, pack, set_num_threads, tq1, unpack
from ternref.packed.bench import interleaved_medians

plt.rcParams.update({"figure.dpi": 80, "font.size": 8})
rng = np.random.default_rng(0)

# %% [markdown]
# ## The i2 layout, read off ternref's own packer
#
# Rather than copy the drawing from the docstring, *measure* it: pack a row of 128 zero codes,
# then for each weight `k` set only that code to `+1` and see which byte and which bits change.
# (Code 0 is stored as `q = 1 = 0b01`, code `+1` as `q = 2 = 0b10`, so the XOR of the two
# bytes is `0b11` at the weight's bit offset.)


# %%
def packed_row(codes_row, fmt):
    t = Ternary(np.asarray(codes_row, np.int8).reshape(1, -1), np.float32(1.0))
    return pack(t, fmt).arrays["codes"][0]


block = i2.BLOCK
base = packed_row(np.zeros(block), "i2")
i2_where = np.zeros((4, 32), int)  # [bit pair, byte] -> weight index
for k in range(block):
    one = np.zeros(block)
    one[k] = 1
    changed = packed_row(one, "i2") ^ base
    byte = int(np.flatnonzero(changed)[0])
    bits = int(changed[byte])
    offset = (bits & -bits).bit_length() - 1  # position of the lowest set bit
    i2_where[offset // 2, byte] = k
print(f"block of {block} weights -> {base.size} bytes")
for byte in (0, 1, 31):
    pairs = ", ".join(f"bits {2 * s + 1}-{2 * s}: w{i2_where[s, byte]}" for s in range(4))
    print(f"byte {byte:2d}: {pairs}")


# %%
def draw_layout(where, title, labels):
    fig, ax = plt.subplots(figsize=(10, 0.45 * where.shape[0] + 0.6))
    ax.imshow(where // 32, cmap="Pastel1", aspect="auto", vmin=0, vmax=8)
    for (r, col), k in np.ndenumerate(where):
        ax.text(col, r, str(k), ha="center", va="center", fontsize=5.5)
    ax.set_xticks(range(0, 32, 4))
    ax.set_yticks(range(where.shape[0]))
    ax.set_yticklabels(labels)
    ax.set_xlabel("byte j of the block")
    ax.set_title(title)
    fig.tight_layout()
    plt.show()


draw_layout(
    i2_where,
    "i2: which weight sits in which byte and bits",
    [f"bits {2 * s + 1}-{2 * s}" for s in range(4)],
)

# %% [markdown]
# Each row of the picture is 32 *consecutive* weights: `(byte >> 2s) & 3` over the 32 bytes
# of a block decodes weights `32s ... 32s + 31` at once, one shift and one mask per 32
# weights, which is what makes this layout SIMD-friendly.
#
# ## Packing i2 by hand
#
# Now write the packer ourselves from that picture, for a small layer whose rows are a
# multiple of 128 long (ternref pads other lengths with code 0; see `packed.py`), and compare
# with `ternref.packed.pack` byte for byte.

# %%
M, K = 8, 256
w = rng.standard_normal((M, K)).astype(np.float32)
t = projections.twn(w)

q = (t.codes + 1).astype(np.uint8)  # code c -> unsigned 2-bit q = c + 1 in {0, 1, 2}
sub = q.reshape(M, K // 128, 4, 32)  # (row, block, sub-block s, lane j)
by_hand = sub[:, :, 0] | (sub[:, :, 1] << 2) | (sub[:, :, 2] << 4) | (sub[:, :, 3] << 6)
by_hand = by_hand.reshape(M, K // 4)

p_i2 = pack(t, "i2")
print(f"by hand: {by_hand.shape} {by_hand.dtype};  ternref: {p_i2.arrays['codes'].shape}")
print("byte-equal:", np.array_equal(by_hand, p_i2.arrays["codes"]))
print("unpack(pack(t)) == t:", unpack(p_i2) == t)

# %% [markdown]
# The dot product never needs the signed codes: with `q = c + 1`,
# $\sum_k c_k x_k = \sum_k q_k x_k - \sum_k x_k$. Decode with shifts and masks and check the
# identity against the dense product:

# %%
x = rng.standard_normal(K).astype(np.float32)
blocks = by_hand.reshape(M, K // 128, 32)
decoded = np.stack([(blocks >> (2 * s)) & 3 for s in range(4)], axis=2).reshape(M, K)
y_bits = t.alpha_pos * (decoded.astype(np.float32) @ x - x.sum())
y_dense = t.dense() @ x
print(f"max |y_bits - y_dense| = {np.abs(y_bits - y_dense).max():.2e}")

# %% [markdown]
# ## tq1: five trits in a byte, decoded by multiplication
#
# Five codes give a base-3 number `v = t0*81 + t1*27 + t2*9 + t3*3 + t4` (0..242, trits
# `t = c + 1`). The byte stores the fixed-point fraction `v / 243` scaled by 256, rounded up.
# Trit `n` comes back without any division: multiplying the byte by `3**n` modulo 256 shifts
# the fraction left by `n` base-3 digits, and `(b * 3) >> 8` reads the leading digit. Check the
# trick on all 243 values:

# %%
digits = np.array(np.unravel_index(np.arange(243), (3, 3, 3, 3, 3))).T  # t0 .. t4 per v
v = digits @ np.array([81, 27, 9, 3, 1])
byte = (v * 256 + 242) // 243  # ceil(256 v / 243)
recovered = np.stack([((byte * 3**n) & 255) * 3 >> 8 for n in range(5)], axis=1)
print(f"values 0..242 fit in a byte: max byte = {byte.max()}")
print(f"all five trits recovered for {np.sum(np.all(recovered == digits, axis=1))} of 243 values")
print(
    "ternref's decode_trit agrees:",
    all(np.array_equal(tq1.decode_trit(byte, n), digits[:, n]) for n in range(5)),
)

# %% [markdown]
# The layout of a 160-weight block, measured the same way as for i2 (which byte changes, and
# which trit of it becomes 2):

# %%
block = tq1.BLOCK
base = packed_row(np.zeros(block), "tq1")
tq1_where = np.zeros((5, 32), int)
for k in range(block):
    one = np.zeros(block)
    one[k] = 1
    row = packed_row(one, "tq1")
    byte_index = int(np.flatnonzero(row != base)[0])
    n = next(n for n in range(5) if tq1.decode_trit(row[byte_index], n) == 2)
    tq1_where[n, byte_index] = k
draw_layout(
    tq1_where,
    "tq1: which weight is trit n of byte j (n = 0 most significant)",
    [f"trit {n}" for n in range(5)],
)

# %%
K5 = 320  # a multiple of 160
codes5 = rng.integers(-1, 2, size=(4, K5)).astype(np.int8)
trits = (codes5.astype(np.int32) + 1).reshape(4, K5 // 160, 5, 32)  # (row, block, n, j)
v5 = np.tensordot(np.array([81, 27, 9, 3, 1]), trits, axes=([0], [2]))  # (row, block, j)
tq1_by_hand = ((v5 * 256 + 242) // 243).astype(np.uint8).reshape(4, K5 // 5)
p_tq1 = pack(Ternary(codes5, np.float32(1.0)), "tq1")
print("tq1 byte-equal:", np.array_equal(tq1_by_hand, p_tq1.arrays["codes"]))

# %% [markdown]
# ## The kernels against the dense product
#
# `linear(x, p)` computes `x @ w_hat.T` from the packed codes. For a few rows of `x` it runs a
# Numba kernel over the packed bytes; for larger batches it decodes tiles of rows to float32 and
# multiplies them with an outer-product block written in LLVM IR where the CPU has AVX-512
# ([`packed/_f32_block.py`](../ternref/packed/_f32_block.py)), a register-blocked Numba loop
# elsewhere (with int8 activations on a CPU with AVX-512 VNNI or AVX2, i2 multiplies its packed
# bytes directly, and tq1 re-encodes each tile of rows as i2 bytes first). `backend="numpy"`
# runs the NumPy *twin* of the same algorithm (slow, readable, what you step through in a
# debugger).
# `activations="int8"` quantizes each row of `x` to int8 (absmax, BitNet-style) and
# accumulates exact integers.

# %%
M, K = 384, 1280  # K is a multiple of 128 and 160: no padding in either format
w = rng.standard_normal((M, K)).astype(np.float32)
t = projections.twn(w, granularity="channel")
w_hat = t.dense()
packs = {fmt: pack(t, fmt) for fmt in ("i2", "tq1", "bitplanes")}

print(
    f"{'format':10s} {'batch':>5s} {'max|kernel - dense|':>20s} {'twin bitwise':>13s} "
    f"{'int8 vs dense-of-int8':>22s}"
)
for fmt, p in packs.items():
    for n in (1, 64):
        x = rng.standard_normal((n, K)).astype(np.float32)
        y = linear(x, p)
        twin = linear(x, p, backend="numpy")
        # the int8 path equals the dense product of the *quantized* activations
        amax = np.abs(x).max(axis=1, keepdims=True)
        xq = np.clip(np.rint(x * 127 / amax), -127, 127) * (amax / 127)
        y8 = linear(x, p, activations="int8")
        err8 = np.abs(y8 - xq @ w_hat.T).max() / np.abs(y8).max()
        print(
            f"{fmt:10s} {n:5d} {np.abs(y - x @ w_hat.T).max():20.2e} "
            f"{str(np.array_equal(y, twin)):>13s} {err8:22.1e}"
        )

# %% [markdown]
# (The last column is relative.) Where the twin is not bitwise equal, the kernel and the twin
# sum in a different order (blocks of dequantized tiles); the difference is float32 rounding.
#
# ## Memory and speed
#
# Memory is exact arithmetic: bytes of codes plus the float32 scales. Speed is measured here,
# on this machine, the way a program meets it: the first call of a kernel compiles it (or loads
# it from Numba's cache), so it is timed on its own; then BLAS and every packed kernel are
# called in turn, round after round (at least 21, more until half a second of calls), with no
# pause, and each gets the median of its rounds, so
# a change of the machine's load hits all of them alike (the test suite never asserts on
# times). ternref runs a large product on helper threads (`ternref.packed.set_num_threads`),
# a small one on the calling thread alone.

# %%
dense_bytes = w_hat.astype(np.float32).nbytes
print(f"dense float32: {dense_bytes / 1024:.0f} KiB")
for fmt, p in packs.items():
    print(
        f"{fmt:10s} {p.nbytes / 1024:6.1f} KiB  {p.bits_per_weight_with_scales:.3f} bits/weight "
        f"(incl. scales)  {dense_bytes / p.nbytes:.1f}x smaller"
    )

print(summary())  # CPU, SIMD flags, caches, thread pools, load
w_dense = np.ascontiguousarray(w_hat)
x1 = rng.standard_normal((1, K)).astype(np.float32)
for fmt, p in packs.items():
    start = time.perf_counter()
    linear(x1, p, "int8")
    print(f"first int8 call of {fmt}: {1e3 * (time.perf_counter() - start):.1f} ms (compile/load)")

default_threads = get_num_threads()
for threads in sorted({default_threads, 1}, reverse=True):
    set_num_threads(threads)
    for n in (1, 64):
        x = rng.standard_normal((n, K)).astype(np.float32)
        calls = {"BLAS": lambda x=x: x @ w_dense.T}
        for fmt, p in packs.items():
            for act in ("float32", "int8"):
                calls[f"{fmt} {act}"] = lambda x=x, p=p, act=act: linear(x, p, act)
        ms = interleaved_medians(calls, reps=21)
        cells = ", ".join(f"{k} {ms['BLAS'] / v:.2f}x" for k, v in ms.items() if k != "BLAS")
        print(f"threads {threads}, batch {n:2d}: BLAS {1e3 * ms['BLAS']:6.1f} us; speed-up {cells}")
set_num_threads(default_threads)

# %% [markdown]
# A speed-up above 1 means the packed kernel beat NumPy's float32 BLAS on this run. At batch 1
# the product reads every weight once and is memory-bound: i2 reads 16x fewer bytes than
# float32 and, with int8 activations, sums exact integers with the CPU's integer dot-product
# instructions: on a CPU with AVX-512 VNNI, i2 runs a loop written in LLVM IR around `vpdpbusd`
# (64 byte products per instruction, `ternref/packed/_vnni.py`), on one with AVX2 only the same
# loop around `vpmaddubsw` (32 per instruction, as in llama.cpp's and bitnet.cpp's AVX2
# kernels); elsewhere LLVM's own vectorization of the plain loop (`vpmaddwd`, or `vpdpwssd` with
# AVX-VNNI); a test checks the compiled kernels for them. At batch 64 the product is
# compute-bound: float32 activations go through a tile of weights decoded to float32 and an
# AVX-512 outer-product block (or a register-blocked loop), near BLAS's speed at this size with
# AVX-512 (about even at 4096, faster at 8192, see the README) and about half of it without;
# int8 activations with those byte products multiply 4 weight rows by 4 activation rows per
# pass over the bytes (tq1 after re-encoding a tile of rows as i2, a few operations per weight
# paid once for all 64 rows) and beat sgemm. Whole models, float against packed, are timed by
# `ternref bench --models` (README, "Benchmarks"); kernels
# at more sizes by `python benchmarks/bench_kernels.py`.
#
# ## Exercises
#
# 1. Pack a row of `K = 300` weights with `granularity="group", group_size=100` in i2 and read
#    the padding off `p.arrays["codes"].shape` and `p.bits_per_weight`. Explain the number
#    with the drawing in [`packed.py`](../ternref/packed/packed.py).
# 2. Write the bit-plane packer by hand: two `uint64` masks per 64 weights (read
#    [`bitplanes.py`](../ternref/packed/bitplanes.py) for the bit order), check it byte-equal
#    against `pack(t, "bitplanes")`, and compute `y = sum(x[pos]) - sum(x[neg])` from it.
# 3. The tq1 byte is `ceil(256 v / 243)`. Show that `floor` would break the decoding for some
#    `v` (find the first one).
# 4. Time `linear` with `activations="int8"` at batch 1. What does the int8 path save, and
#    what does it cost in accuracy (compare with the float32 path)?
