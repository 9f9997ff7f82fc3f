"""Pipeline parallelism for `ModelParallelStrategy(pipeline_parallel_size=...)`: where a model is cut into stages
(`cut`) and how one batch runs through them (`schedule`, torch.distributed.pipelining's schedules)."""
from fabric_kit.strategies.pipeline.cut import StageSplit, cut_stages, rank_stages, stage_ranges, stages_of
from fabric_kit.strategies.pipeline.schedule import SCHEDULES, PipelinedModel, check_schedule, check_schedule_name

__all__ = ["SCHEDULES", "PipelinedModel", "StageSplit", "check_schedule", "check_schedule_name", "cut_stages",
           "rank_stages", "stage_ranges", "stages_of"]
