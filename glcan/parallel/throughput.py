"""A throughput model of the forward-only pipeline: P stages x R replicas, before renting the GPUs.

Local learning's pipeline sends activations forward only, so it has no flush: once full, every
stage works on its own batch and the pipeline delivers one batch per *period*, the time of its
slowest resource. The resources are

* each stage's compute: the sum of its blocks' step times (forward, head, backward, optimizer),
  plus, with R > 1 replicas, the ring all-reduce of its blocks' gradients with the same stage of
  the other replicas (``2 (R-1) x (bytes / R / bandwidth + latency)``, not overlapped with compute: the
  conservative case);
* each link between consecutive stages: one boundary activation per batch, with the batch it
  was made from (``bytes / bandwidth + latency``). With ``overlap=True`` (NCCL on GPUs, copy engines) a
  transfer runs beside the compute and the link is a resource of its own; with
  ``overlap=False`` (gloo on CPU: the cores copy the bytes) both ends pay it in their compute.

From the period follow the steady-state images/s (R batches per period), the speedup over one
device running all blocks one after the other (``R x sum(block times) / period``), and the
*bubble*: the share of stage time spent waiting, in steady state (unequal stages) and over a
run of N batches (the P-1 batches of fill and drain). The stages' meetings every
``log_every_n_steps`` batches (one drain each) are left out. The inputs are measured, not assumed:
per-block step times (``glcan.lit.pipeline.block_times_ms``, which the pipeline strategy uses
for its grouping), activation and gradient sizes; only the links are assumptions, named in
:data:`LINKS`. bench/pipeline_model.py checks the model against measured pipeline runs and
writes the GPU predictions to docs/benchmarks/pipeline_model.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class Link:
    """A link's sustained bandwidth (bytes/s, one direction) and per-message latency (s)."""

    name: str
    bytes_per_s: float
    latency_s: float

    def seconds(self, nbytes: float) -> float:
        return nbytes / self.bytes_per_s + self.latency_s


#: Typical sustained figures (not peaks); a user with other hardware passes a Link of their own.
LINKS = {
    "nvlink": Link("NVLink 3 (A100), ~200 GB/s sustained per direction", 200e9, 5e-6),
    "pcie4": Link("PCIe 4.0 x16, ~20 GB/s sustained", 20e9, 10e-6),
    "eth25": Link("25 Gb/s Ethernet (TCP), ~2.8 GB/s sustained", 2.8e9, 50e-6),
}


@dataclass
class Prediction:
    """What :func:`predict` returns; times in seconds."""

    period_s: float           # steady state: one batch per replica per period
    images_per_s: float       # all replicas together
    speedup: float            # over one device running every block in turn
    bubble: float             # steady-state share of stage time spent idle
    bubble_run: float         # the same over a run of `batches` batches, fill and drain included
    bottleneck: str           # "stage s" or "link s->s+1"
    stage_s: list[float]      # each stage's time per batch (compute + all-reduce [+ transfers])
    link_s: list[float]       # each link's time per batch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(block_s: Sequence[float], boundary_bytes: Sequence[float], groups: Sequence[Sequence[int]],
            batch_size: int, link: Link, *, replicas: int = 1, grad_bytes: Optional[Sequence[float]] = None,
            network: Optional[Link] = None, overlap: bool = True, batches: int = 1000) -> Prediction:
    """The pipeline's steady-state throughput for P = len(groups) stages x ``replicas``.

    Args:
        block_s: each block's step time on one device (s per batch of ``batch_size``).
        boundary_bytes: each block's output activation, in bytes per batch (the last is unused).
        groups: contiguous block indices per stage (``glcan.lit.pipeline.group_blocks``).
        batch_size: images per batch on each replica.
        link: the link between consecutive stages.
        replicas: data-parallel copies of the pipeline (R).
        grad_bytes: each block's gradient bytes (its parameters and its head's); needed if R > 1.
        network: the link between replicas (default ``link``).
        overlap: transfers run beside compute (GPU); False charges them to both ends (CPU gloo).
        batches: run length for ``bubble_run``.
    """
    if replicas > 1 and grad_bytes is None:
        raise ValueError("grad_bytes is needed to predict data parallelism (replicas > 1)")
    network = network or link
    compute = [sum(block_s[b] for b in g) for g in groups]
    link_s = [link.seconds(boundary_bytes[g[-1]]) for g in groups[:-1]]
    stage_s = []
    for s, (g, c) in enumerate(zip(groups, compute)):
        t = c
        if replicas > 1:
            nbytes = sum(grad_bytes[b] for b in g)  # type: ignore[index]
            # ring all-reduce: 2(R-1) steps, each moving 1/R of the gradients
            t += 2 * (replicas - 1) * (nbytes / replicas / network.bytes_per_s + network.latency_s)
        if not overlap:
            t += (link_s[s - 1] if s > 0 else 0.0) + (link_s[s] if s < len(link_s) else 0.0)
        stage_s.append(t)
    candidates = [(t, f"stage {s}") for s, t in enumerate(stage_s)]
    if overlap:
        candidates += [(t, f"link {s}->{s + 1}") for s, t in enumerate(link_s)]
    period, bottleneck = max(candidates, key=lambda c: c[0])  # on a tie, the earliest
    p = len(groups)
    # A run of N batches: the first batch crosses every stage and link, then one leaves per period.
    run_s = sum(stage_s) + (sum(link_s) if overlap else 0.0) + (batches - 1) * period
    return Prediction(period_s=period, images_per_s=replicas * batch_size / period,
                      speedup=replicas * sum(block_s) / period, bubble=1.0 - sum(stage_s) / (p * period),
                      bubble_run=1.0 - batches * sum(stage_s) / (p * run_s), bottleneck=bottleneck,
                      stage_s=stage_s, link_s=link_s)
