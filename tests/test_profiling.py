"""`fabric.profile()` (fabric_kit/profiling.py): a torch.profiler context writing this rank's Chrome trace, one per
active window of a schedule. On 2 processes it is checked in tests/loops/profilers/test_profilers.py."""
import json

import pytest
import torch

from fabric_kit import Fabric


def test_profile_writes_a_chrome_trace_with_memory(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    model = torch.nn.Linear(4, 2)
    with fabric.profile(tmp_path, filename="raw") as prof:
        model(torch.randn(3, 4)).sum().backward()
    (trace,) = tmp_path.glob("raw-0.*.pt.trace.json")
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"aten::addmm", "[memory]"} <= names
    assert prof.key_averages().table(row_limit=5)


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")
def test_profile_with_a_schedule_writes_one_trace_per_window(tmp_path):
    fabric = Fabric(accelerator="cpu", devices=1)
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=1, repeat=2)
    with fabric.profile(tmp_path, schedule=schedule, profile_memory=False) as prof:
        for _ in range(6):
            torch.randn(8, 8) @ torch.randn(8, 8)
            prof.step()
    traces = list(tmp_path.glob("profile-0.*.pt.trace.json"))
    assert len(traces) == 2
    names = {event.get("name") for event in json.loads(traces[0].read_text())["traceEvents"]}
    assert "[memory]" not in names and any(str(name).startswith("ProfilerStep#") for name in names)
