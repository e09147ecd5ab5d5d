"""``ternref compare`` on a Dask cluster: thread limits, the worker task, the submission loop.

The runs of a comparison are independent trainings, so they go to Dask's ``distributed``
scheduler (the ``distributed`` extra: ``pip install 'ternref[distributed]'``), either a
:class:`distributed.LocalCluster` of ``jobs`` worker processes on this machine (``--jobs``) or a
running cluster (``--scheduler tcp://HOST:PORT``). This module is imported only then; the
sequential default needs none of it.

What travels where:

* the client sends each run a small specification (names, seed, recipe, data folder) and, for a
  method registered in the client's process only, its class (cloudpickle);
* each worker loads the data set itself, from its own disk, once per process;
* a worker sends back one small record per run (accuracy, sparsity, timings, packed statistics);
* the trained full-precision model of a seed, which ``start="fp"`` and distillation methods need,
  stays on the worker that trained it as the result of a Dask future; the dependent runs take
  that future as an argument, so Dask ships the state arrays worker to worker (never through the
  scheduler, never to the client) and runs them only after it exists.

Thread limits. A worker process runs one training at a time (``--nthreads 1``) and uses
``threads`` BLAS and Numba threads for it (default ``cores // jobs``), so ``jobs`` trainings
never oversubscribe the cores. OpenBLAS and Numba read their thread counts when they load, so the
limits go into the environment of the worker processes before they start
(``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``BLIS_NUM_THREADS``,
``NUMBA_NUM_THREADS``) and are set again inside every run with ``threadpoolctl`` and
``numba.set_num_threads`` (which is per thread: it must run in the thread that trains). Each run
reports the limits it actually had (:func:`effective_limits`).

Why the thread count matters for the answers: OpenBLAS splits a float32 matrix product
differently with 1 and 2 threads, and the last bits of the result change (measured here: up to
7e-5 on a 128x1024 @ 1024x512 product), which a training run amplifies. For the same seeds and
the same number of threads per run, sequential, ``--jobs`` and cluster runs give the same bits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import queue
import time
import uuid

EXTRA = "distributed"
MISSING_EXTRA = (
    "--jobs and --scheduler run on Dask, which is not installed: "
    f"pip install 'ternref[{EXTRA}]' (dask, distributed, threadpoolctl)"
)
MISSING_THREADPOOLCTL = (
    "setting the threads per run needs threadpoolctl: "
    f"pip install 'ternref[{EXTRA}]' or pip install threadpoolctl"
)
#: Variables that fix the size of the BLAS/OpenMP/Numba thread pools when a process loads them.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
#: With no worker connected for this long, the runs still waiting are reported as failed.
NO_WORKER_GRACE = 60.0
_POLL = 0.1


def require() -> None:
    """Raise ImportError naming the ``distributed`` extra when Dask or threadpoolctl is missing."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING_EXTRA) from exc


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(jobs: int, cores: int | None = None) -> int:
    """BLAS/Numba threads of each of ``jobs`` worker processes: ``cores // jobs``, at least 1."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // jobs)


def thread_environment(threads: int) -> dict[str, str]:
    """The environment variables that limit every thread pool of a new process to ``threads``."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def limit_threads(threads: int) -> None:
    """Limit BLAS/OpenMP (process-wide) and Numba (this thread) to ``threads`` threads."""
    import numba

    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise ImportError(MISSING_THREADPOOLCTL) from exc
    threadpool_limits(limits=threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def limited_threads(threads: int | None):
    """Run the body with ``threads`` BLAS and Numba threads, then restore the previous limits
    (``None``: leave everything as it is)."""
    if threads is None:
        yield
        return
    import numba

    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise ImportError(MISSING_THREADPOOLCTL) from exc
    numba_before = numba.get_num_threads()
    with threadpool_limits(limits=threads):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(numba_before)


def effective_limits() -> dict:
    """The thread limits this thread of this process has now.

    ``blas``: the thread count of the BLAS libraries numpy loaded (``None`` without
    threadpoolctl, or several values if they disagree); ``openmp`` likewise; ``numba``: Numba's
    threads for this thread and its pool size; ``env``: the thread variables of the process.
    """
    import numba

    out = {
        "blas": None,
        "openmp": None,
        "numba": numba.get_num_threads(),
        "numba_pool": numba.config.NUMBA_NUM_THREADS,
        "env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "pid": os.getpid(),
        "host": platform.node(),
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    for api in ("blas", "openmp"):
        counts = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == api})
        out[api] = counts[0] if len(counts) == 1 else (counts or None)
    return out


# ----------------------------------------------------------------------------- clusters
@contextlib.contextmanager
def local_cluster(jobs: int, threads: int):
    """A LocalCluster of ``jobs`` worker processes, one task and ``threads`` threads each.

    Dask's Nanny copies its ``pre-spawn-environ`` into ``os.environ`` before it spawns a worker,
    preferring values already in ``os.environ``; so the thread variables are put there for the
    start (and restored after), which makes them the values the workers' BLAS and Numba load
    with. A worker restarted later (after a crash) gets the same values from its Nanny.
    """
    import dask
    from distributed import Client, LocalCluster

    env = thread_environment(threads)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = LocalCluster(
                n_workers=jobs,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: several clusters may run here
                silence_logs=logging.ERROR,
                env=env,
            )
    finally:
        _restore_environment(saved)
    try:
        client = Client(cluster)
        try:
            client.register_plugin(_interrupts_are_for_the_client(), name="ternref-no-sigint")
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
        _restore_environment(saved)  # a restarted worker's Nanny writes them again


def _interrupts_are_for_the_client():
    """A worker plugin that makes the workers of a LocalCluster ignore SIGINT.

    Ctrl-C in a terminal reaches the whole process group, the worker processes too. Without
    this, each worker dies of it, its Nanny starts a new one, and the client's orderly stop
    (cancel what is waiting, close the cluster) waits for processes that are restarting. The
    client alone handles the interrupt; a plugin is also given to restarted workers.
    """
    from distributed import WorkerPlugin

    class IgnoreInterrupt(WorkerPlugin):
        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupt()


def _restore_environment(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def connect(address: str, timeout: float):
    """A Client of the running scheduler at ``address``; ConnectionError within ``timeout``
    seconds if it cannot be reached or has no worker."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"could not reach the Dask scheduler at {address} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); is `dask scheduler` running there?"
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"the Dask scheduler at {address} has no worker after {timeout:g} s; start "
                f"some with `dask worker {address} --nthreads 1 ...` ({type(exc).__name__})"
            ) from None
        yield client
    finally:
        client.close()


# ----------------------------------------------------------------------------- on a worker
_DATASETS: dict = {}


def _dataset(name: str, data_dir):
    """The data set, loaded from this worker's disk once per worker process."""
    from ternref.data import load_dataset

    key = (name, data_dir)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(name, data_dir=data_dir)
    return _DATASETS[key]


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{platform.node()} pid {os.getpid()}"


def run_task(spec: dict, parent=None):
    """Run one (method, seed) on a worker; return ``(record, state)``.

    ``parent`` is the result ``(record, state)`` of the full-precision run of the same seed
    when this run starts from it or learns from it, else ``None``. ``state`` is the trained
    model's state (see :func:`ternref.compare.model_state`) when ``spec["return_state"]``, else
    ``None``. Every failure, the data set's included, comes back as a record with status
    ``"failed"`` and the worker's message.
    """
    import ternref
    from ternref import compare as cmp

    worker = _worker_address()
    name, seed = spec["method"], spec["seed"]
    try:
        if spec["ternref"] != ternref.__version__:
            raise RuntimeError(
                f"this worker has ternref {ternref.__version__}, the client {spec['ternref']}"
            )
        if spec["threads"] is not None:
            limit_threads(spec["threads"])
        if spec["method_class"] is not None:
            _register(name, spec["method_class"])
        data = _dataset(spec["dataset"], spec["data_dir"])
        fp_model, fp_problem = None, None
        if parent is not None:
            parent_record, state = parent
            if state is not None:
                fp_model = cmp.model_from_state(spec["args"]["model"], data, state)
            else:
                fp_problem = cmp.baseline_problem(parent_record)
        record, model = cmp.execute_run(
            name,
            data,
            spec["args"],
            seed,
            None,
            fp_model,
            spec["start"],
            measure_packed=spec["measure_packed"],
            fp_problem=fp_problem,
            expected=spec["expected"],
        )
    except Exception as exc:  # noqa: BLE001 - a failed row with the worker's message
        record = cmp.failed_record(name, seed, f"{type(exc).__name__}: {exc} (on {worker})")
        model = None
    record["worker"] = worker
    record["threads"] = cmp.thread_report()
    state = None
    if spec["return_state"]:
        if model is not None and record.get("reproduces", True):
            state = cmp.model_state(model)
        _announce(spec, record)
    return record, state


def _announce(spec: dict, record: dict) -> None:
    """Send the record of a run whose result (with the state) stays on this worker to the client
    now, as a Dask event: a worker that has queued its next run starts it before the scheduler
    could send it the small task that extracts the record, which would delay the row by a run."""
    try:
        from distributed import get_worker

        get_worker().log_event(spec["topic"], {"task": spec["task"], "record": record})
    except (ImportError, ValueError):  # not on a worker: the future's result is the fallback
        pass


def record_of(result):
    """The record of a ``(record, state)`` result, so the client never fetches the state."""
    return result[0]


def _register(name: str, cls) -> None:
    from ternref.methods import base

    if base._METHODS.get(name) is not cls:
        base._METHODS[name] = cls  # the client's definition of the method is the table's


# ----------------------------------------------------------------------------- the client
def run(client, tasks: list[dict], on_record, *, spec_of, depends_on, on_state=None) -> None:
    """Submit ``tasks`` to ``client`` and call ``on_record(task, record)`` as each finishes.

    ``spec_of(task)`` gives the specification for :func:`run_task`; ``depends_on(task)`` the
    seed whose full-precision run it needs, or ``None``. The full-precision tasks are submitted
    first, so they run first; a dependent task is submitted with the full-precision future as
    its argument and waits for it. A task that Dask reports as erred (its worker died more often
    than ``distributed.scheduler.allowed-failures``, or it could not be unpickled) becomes a
    failed record. On KeyboardInterrupt (or any exception) every pending task is cancelled
    before the exception goes on.

    A task with ``role == "stored"`` carries the state of a baseline saved by an earlier
    sitting (``task["state"]``): it is not run; the state goes from this process straight to
    the workers (``client.scatter``, not through the scheduler) as its dependents' parent.
    ``on_state(task, record, state)``, if given, receives the trained state of every task with
    ``return_state`` (fetched from its worker) when its record arrives.
    """
    from distributed import as_completed

    from ternref.compare import FULL_PRECISION, failed_record

    fp_futures, users = {}, {}
    for task in tasks:
        seed = depends_on(task)
        if seed is not None:
            users[seed] = users.get(seed, 0) + 1
    watched, submitted = {}, []
    topic = f"ternref-records-{uuid.uuid4().hex}"
    announced = queue.SimpleQueue()  # records the workers sent as events, ahead of the futures
    client.subscribe_topic(topic, lambda event: announced.put(event[1]))
    try:
        for number, task in enumerate(sorted(tasks, key=lambda t: t["method"] != FULL_PRECISION)):
            task["number"] = number
            if task.get("role") == "stored":
                value = (task["expected"], task["state"])
                fp_futures[task["seed"]] = client.scatter([value], hash=False)[0]
                on_record(task, task["expected"])
                continue
            spec = {**spec_of(task), "topic": topic, "task": number}
            key = f"ternref-{task['method']}-seed{task['seed']}-{uuid.uuid4().hex[:8]}"
            seed = depends_on(task)
            parent = fp_futures.get(seed) if seed is not None else None
            # baselines first: Dask does not keep submission order (measured: a seed's baseline
            # still waiting after 18 other runs), and every run of that seed waits for it
            first = 5 if task["method"] == FULL_PRECISION else 0
            future = client.submit(run_task, spec, parent, key=key, pure=False, priority=first)
            submitted.append(future)
            if spec["return_state"]:
                fp_futures[task["seed"]] = future
                # ahead of the queued runs, so the baseline's row arrives when it is trained
                future = client.submit(
                    record_of, future, key=key + "-record", pure=False, priority=10
                )
                submitted.append(future)
            watched[future] = task
        completed = as_completed(list(watched), loop=client.loop)
        by_number = {task["number"]: future for future, task in watched.items()}
        no_worker_since = None
        while watched:
            ready = completed.next_batch(block=False) if completed.has_ready() else []
            early = []
            while not announced.empty():
                message = announced.get()
                future = by_number.get(message["task"])
                if future in watched:  # not yet reported (a retried run announces again)
                    early.append((future, message["record"]))
            for future, record in [*early, *((f, None) for f in ready)]:
                if future not in watched:
                    continue  # its record was announced before the future finished
                task = watched.pop(future)
                seed = depends_on(task)
                if record is None:
                    record = _record(future, task, failed_record, fp_futures.get(seed))
                if seed is not None:
                    users[seed] -= 1
                    if users[seed] == 0 and seed in fp_futures:
                        fp_futures.pop(seed).release()  # the state can leave the worker
                own = fp_futures.get(task["seed"]) if task.get("return_state") else None
                if own is not None and on_state is not None:
                    result = own.result() if own.status != "error" else (record, None)
                    on_state(task, record, result[1])
                    if not users.get(task["seed"]):
                        fp_futures.pop(task["seed"]).release()  # nobody else needs it
                on_record(task, record)
            if ready or early:
                continue
            time.sleep(_POLL)
            if client.scheduler_info().get("workers"):
                no_worker_since = None
            elif no_worker_since is None:
                no_worker_since = time.monotonic()
            elif time.monotonic() - no_worker_since > NO_WORKER_GRACE:
                for future, task in list(watched.items()):
                    message = f"no Dask worker left for {NO_WORKER_GRACE:g} s"
                    on_record(task, failed_record(task["method"], task["seed"], message))
                    del watched[future]
    finally:
        client.unsubscribe_topic(topic)
        pending = [f for f in submitted if not f.done()]
        if pending:
            client.cancel(pending, force=True)


def _record(future, task, failed_record, parent=None) -> dict:
    """The record a finished future holds, or a failed record for an erred/cancelled one
    (``parent``: the full-precision future it depends on, if any)."""
    if future.status == "finished":
        value = future.result()
        return value[0] if isinstance(value, tuple) else value  # (record, None) of run_task
    if future.status == "error":
        exc = future.exception()
        message = f"{type(exc).__name__}: {exc}"
        if parent is not None and parent.status == "error":
            message = f"the full-precision baseline of this seed failed: {message}"
    else:  # "cancelled" by Dask, not by us: the client lost the scheduler
        message = (
            f"the Dask scheduler reports this run as {future.status} (the connection to the "
            f"scheduler was lost, or another client cancelled it)"
        )
    return failed_record(task["method"], task["seed"], message)
