"""How the packed kernels use several cores without fighting NumPy's BLAS threads.

Why not Numba's ``parallel=True``
---------------------------------
OpenBLAS (the BLAS inside NumPy's wheels) keeps its worker threads spinning for a while after
every call, and Numba's OpenMP pool does the same after every parallel region. A program that
alternates NumPy and packed products (any model whose first and last layers stay in full
precision) then starts each parallel region while the other library's threads still hold a core.
A fork-join region is only as fast as its slowest thread: the thread that lost its core waits
for the scheduler's next tick, and a 0.65 ms product took 6 ms inside a model (measured on the
project's 2-core machine; the options compared are in the closing notes of issue 17).

What this module does instead
-----------------------------
The work of one product is cut into chunks (ranges of output rows, or of activation rows) and
the chunks are *claimed*, one at a time, by the calling thread and by ``threads - 1`` helper
threads. The kernels are serial Numba functions compiled with ``nogil=True``, so the threads run
them truly in parallel. Nothing ever waits for a thread that has not started: a helper that wakes
late finds no chunk left and goes back to sleep, and the caller only waits for chunks that are
actually being computed. If another library's spinning thread holds a core, the caller simply
computes more of the chunks itself. Idle helpers block on a queue (they sleep; they never spin),
so the next NumPy call gets both cores at once.

Small products (below ``SERIAL_BELOW`` multiply-adds) run in the calling thread only: waking a
helper costs more than the work.

The number of threads is :func:`get_num_threads`: the ``TERNREF_NUM_THREADS`` environment
variable, else ``NUMBA_NUM_THREADS``, else the number of CPUs this process may run on; change it
with :func:`set_num_threads`.
"""

from __future__ import annotations

import os
import queue
import threading

SERIAL_BELOW = 1 << 23
"""Products with fewer multiply-adds than this (about 0.1 ms of work for the float32 tiles)
run in the calling thread alone: a helper woken through the queue starts 23-56 us later
(median; p90 45-220 us) on the project's 2-core VM, and longer when OpenBLAS's threads still
spin after a NumPy call. Measured 2026-12-03 (AMD EPYC Zen 5), models interleaved with their
float models: LeNet-5's packed second convolution at batch 1 (5.7 M multiply-adds) took 96-100
us on one thread and 103-149 us on two, and the packed LeNet-5 at batch 1 0.25-0.27 ms with the
threshold at 2^21 against 0.20-0.21 ms at 2^23; the MLP's 256 x 256 layer at batch 359 (23.5
M) is as fast or faster on two threads (0.41-0.47 ms against 0.47-0.49 ms for the model with
the threshold at 2^25)."""

CHUNKS_PER_THREAD = 4
"""Chunks per thread for a parallel product: enough for the claiming to balance the load."""

MIN_CHUNK_WORK = 1 << 20
"""Multiply-adds of the smallest chunk worth handing to another thread."""


def _default_threads() -> int:
    for name in ("TERNREF_NUM_THREADS", "NUMBA_NUM_THREADS"):
        value = os.environ.get(name)
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
            if n < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_threads = _default_threads()


def get_num_threads() -> int:
    """Threads the packed kernels use (the caller included)."""
    return _threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (the caller included) for the packed kernels; 1 makes them serial."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _threads = n


class _Job:
    """One parallel product: ``work(i)`` for every chunk ``i`` in ``range(n_chunks)``."""

    __slots__ = ("work", "n_chunks", "next_chunk", "finished", "lock", "all_done", "error")

    def __init__(self, work, n_chunks: int):
        self.work = work
        self.n_chunks = n_chunks
        self.next_chunk = 0
        self.finished = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.error = None

    def run(self) -> None:
        """Claim and compute chunks until none is left."""
        while True:
            with self.lock:
                i = self.next_chunk
                if i >= self.n_chunks:
                    return
                self.next_chunk = i + 1
            try:
                if self.error is None:
                    self.work(i)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                self.error = exc
            with self.lock:
                self.finished += 1
                if self.finished == self.n_chunks:
                    self.all_done.set()


class _Helpers:
    """Daemon threads that sleep on a queue and join whatever job they are handed."""

    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.count = 0
        self.lock = threading.Lock()

    def ensure(self, n: int) -> None:
        with self.lock:
            while self.count < n:
                threading.Thread(target=self._serve, name="ternref-packed", daemon=True).start()
                self.count += 1

    def _serve(self) -> None:
        while True:
            self.inbox.get().run()


_helpers = _Helpers()


def parallel_chunks(work, n_chunks: int, threads: int | None = None) -> None:
    """Run ``work(i)`` for ``i in range(n_chunks)`` on the caller and the helper threads.

    ``work`` should spend its time in a ``nogil`` kernel. The first exception raised by a chunk
    is re-raised here after every claimed chunk has finished (no chunk is left running).
    """
    threads = get_num_threads() if threads is None else threads
    if n_chunks <= 0:
        return
    if threads <= 1 or n_chunks == 1:
        for i in range(n_chunks):
            work(i)
        return
    job = _Job(work, n_chunks)
    n_help = min(threads, n_chunks) - 1
    _helpers.ensure(n_help)
    for _ in range(n_help):
        _helpers.inbox.put(job)
    job.run()
    job.all_done.wait()
    if job.error is not None:
        raise job.error


def split(n: int, n_chunks: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into at most ``n_chunks`` contiguous pieces whose starts are multiples of
    ``multiple`` (so that a tile of rows never straddles two chunks)."""
    n_chunks = max(1, min(n_chunks, -(-n // multiple)))
    step = -(-n // (n_chunks * multiple)) * multiple
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def plan(n_items: int, work_per_item: int, multiple: int = 1) -> list[tuple[int, int]]:
    """The chunks for ``n_items`` items of ``work_per_item`` multiply-adds each: one chunk when
    the whole product is below :data:`SERIAL_BELOW` or only one thread is used, else about
    ``CHUNKS_PER_THREAD`` per thread."""
    threads = get_num_threads()
    work = n_items * work_per_item
    if threads <= 1 or work < SERIAL_BELOW:
        return [(0, n_items)]
    return split(n_items, min(threads * CHUNKS_PER_THREAD, work // MIN_CHUNK_WORK), multiple)


def run(kernel, args: tuple, chunks: list[tuple], *tail) -> None:
    """Call ``kernel(*args, *chunk, *tail)`` for every chunk (a tuple of bounds), in parallel
    when there are several."""
    if len(chunks) == 1:
        kernel(*args, *chunks[0], *tail)
        return
    parallel_chunks(lambda i: kernel(*args, *chunks[i], *tail), len(chunks))
