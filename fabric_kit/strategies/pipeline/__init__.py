"""Pipeline parallelism for `ModelParallelStrategy(pipeline_parallel_size=...)`: where a model is cut into stages
(`cut`) and how one batch runs through them (`schedule`, torch.distributed.pipelining's schedules)."""
from fabric_kit.strategies.pipeline.cut import cut_stages, stage_ranges
from fabric_kit.strategies.pipeline.schedule import SCHEDULES, PipelinedModel, check_schedule

__all__ = ["SCHEDULES", "PipelinedModel", "check_schedule", "cut_stages", "stage_ranges"]
