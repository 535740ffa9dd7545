"""debug=profile: torch.profiler over a few training steps. It writes a Chrome trace
(chrome://tracing, Perfetto) and a table of the most expensive operators to
<run dir>/profile/, which the run logs as artifacts."""

from __future__ import annotations

from pathlib import Path

import torch


class StepProfiler:
    """Profiles `steps` training steps after one warm-up step; `steps` 0 does nothing."""

    def __init__(self, steps: int, out_dir: Path):
        self.out_dir, self.profiler = Path(out_dir), None
        if steps > 0:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(
                activities=activities,
                schedule=torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1),
                on_trace_ready=self._write,
            )

    def _write(self, prof) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.out_dir / "trace.json"))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        (self.out_dir / "ops.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=30))

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def __enter__(self) -> StepProfiler:
        if self.profiler is not None:
            self.profiler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.profiler is not None:
            self.profiler.stop()
