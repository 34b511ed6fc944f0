"""The workers' process entry, and the launcher that starts and watches them.

A worker that fails writes one line (naming itself and the cause) to ``workers/workerN.error``
and exits with code 1; under torchrun it also prints it, as nobody else will.

If a worker exits with an error or is killed, the launcher waits a moment for the others to
report (a neighbour of a dead worker notices the closed connection at once), stops the rest,
and prints one line naming the worker that failed *first*: one killed by a signal, or one with
an error of its own, ahead of those that merely lost their neighbour.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import traceback
from pathlib import Path

import torch.distributed as dist
from torch.multiprocessing import start_processes

from glcan.parallel.shards import last_complete
from glcan.parallel.comm import PeerLost
from glcan.parallel.job import Job, worker_dir
from glcan.parallel.worker import Worker


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_main(rank: int, job: Job) -> None:
    """Process entry (torch.multiprocessing or torchrun): run, or stop with one line naming us."""
    worker = Worker(rank, job)
    try:
        worker.run()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - turned into one line for the launcher and the user
        cause = (str(e).strip().splitlines() or [""])[0]
        message = f"pipeline worker {rank} ({job.blocks_text(rank)}) {'stopped' if isinstance(e, PeerLost) else 'failed'}: " \
                  f"{cause if isinstance(e, PeerLost) else f'{type(e).__name__}: {cause}'}"
        try:
            path = worker_dir(job.run_dir) / f"worker{rank}.error"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"message": message, "peer_lost": isinstance(e, PeerLost)}))
        except OSError:
            pass
        if not job.spawned:
            print(f"error: {message}", file=sys.stderr, flush=True)
        if os.environ.get("GLCAN_DEBUG"):
            traceback.print_exc()
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def worker_from_file(rank: int, path: str) -> None:
    """Spawned workers' entry: the job (with the model) comes from a file, not the spawn pipe.

    A large spawn payload can hang the launcher: it writes into a pipe whose read end it still
    holds, so a child that dies before reading everything leaves the write blocked for ever.
    """
    try:
        with open(path, "rb") as f:
            job = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - reported like any worker failure
        message = f"pipeline worker {rank} failed to start: {type(e).__name__}: {e}"
        (Path(path).parent / f"worker{rank}.error").write_text(json.dumps({"message": message, "peer_lost": False}))
        sys.exit(1)
    worker_main(rank, job)


def spawn(job: Job) -> int:
    """Run the job in ``job.workers`` spawned processes; 0 on success, 1 after a failure."""
    job.spawned, job.init_method = True, f"tcp://127.0.0.1:{_free_port()}"
    wdir = worker_dir(job.run_dir)
    wdir.mkdir(parents=True, exist_ok=True)
    for stale in wdir.glob("worker*.error"):
        stale.unlink()
    job_file = wdir / "job.pkl"
    with open(job_file, "wb") as f:
        pickle.dump(job, f)
    try:
        return _watch(job, start_processes(worker_from_file, args=(str(job_file),), nprocs=job.workers, join=False,
                                           start_method="spawn").processes)
    finally:
        job_file.unlink(missing_ok=True)


def _watch(job: Job, procs: list) -> int:
    pending = {p.sentinel: i for i, p in enumerate(procs)}
    try:
        while pending:
            for s in multiprocessing.connection.wait(list(pending)):
                procs[pending.pop(s)].join()
            if any(p.exitcode not in (None, 0) for p in procs):
                multiprocessing.connection.wait(list(pending), timeout=1.0)  # let the others report
                exited = [i for i, p in enumerate(procs) if not p.is_alive()]
                _stop(procs)
                print(f"error: {failure_message(job, procs, exited)}", file=sys.stderr, flush=True)
                return 1
    except KeyboardInterrupt:
        _stop(procs)
        print("error: interrupted; the pipeline workers were stopped", file=sys.stderr, flush=True)
        return 130
    return 0


def _stop(procs: list) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()


def failure_message(job: Job, procs: list, exited: list[int]) -> str:
    """One line on the first failure among the workers in ``exited`` (those that stopped by themselves)."""
    failures = []
    for i in exited:
        code = procs[i].exitcode
        path = worker_dir(job.run_dir) / f"worker{i}.error"
        info = json.loads(path.read_text()) if path.exists() else None
        if code != 0:
            rank = 0 if code < 0 else 1 if info and not info["peer_lost"] else 2 if info else 3
            failures.append((rank, i, code, info))
    _, i, code, info = min(failures) if failures else (0, 0, None, None)
    who = f"pipeline worker {i} ({job.blocks_text(i)})"
    if code is not None and code < 0:
        what = f"{who} was killed by {signal.Signals(-code).name}"
    elif info:
        what = info["message"]
    else:
        what = f"{who} exited with code {code}"
    last = last_complete(job.run_dir)
    return f"{what}; the other workers were stopped; last complete checkpoint: {last or 'none (no epoch finished)'}"
