"""The sweep's configuration (no Optuna import: the CLI builds it cheaply)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..cells import get_cell
from ..tasks import make as make_task
from .space import SearchSpace
from .storage import check_storage

METRICS = ("test_mean_error", "test_error_rate")
SAMPLERS = ("random", "tpe")
GREFF_CELLS = ("vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr")


@dataclass(frozen=True)
class SweepConfig:
    """task, task_params: the problem; cells: the variants, one study each, named
    "{study}:{cell}"; trials: COMPLETE trials wanted per cell; metric: what is minimised
    (the trainer's test mean error, or the fraction of test sequences judged wrong);
    max_sequences / max_seconds / batch_size: each trial's training budget (SGD with
    momentum, as Greff et al.); heartbeat / grace: seconds between a trial's heartbeats, and
    without one before it is failed."""

    task: str
    cells: tuple[str, ...] = GREFF_CELLS
    trials: int = 20
    storage: str = "sqlite:///sweeps.db"
    study: str = "greff"
    task_params: dict = field(default_factory=dict)
    sampler: str = "random"
    metric: str = "test_mean_error"
    space: SearchSpace = SearchSpace()
    max_sequences: int = 10_000
    max_seconds: float | None = None
    batch_size: int = 1
    seed: int = 0
    heartbeat: int = 10
    grace: int = 30

    def __post_init__(self):
        make_task(self.task, **self.task_params)
        if not self.cells:
            raise ValueError("cells is empty; allowed: one or more of lstmlab.cell_names()")
        for c in self.cells:
            get_cell(c)
        for name in ("trials", "max_sequences", "batch_size", "heartbeat", "grace"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid; allowed: an int >= 1")
        if self.grace <= self.heartbeat:
            raise ValueError(f"grace={self.grace} is invalid; allowed: more than heartbeat={self.heartbeat}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is invalid; allowed: {SAMPLERS}")
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is invalid; allowed: {METRICS}")
        check_storage(self.storage)

    def study_name(self, cell: str) -> str:
        return f"{self.study}:{cell}"

    def identity(self) -> dict:
        """What must not change between a study's runs (the budget and workers may)."""
        d = asdict(self)
        return {
            k: d[k]
            for k in (
                "task",
                "task_params",
                "metric",
                "space",
                "max_sequences",
                "max_seconds",
                "batch_size",
                "seed",
                "sampler",
            )
        }
