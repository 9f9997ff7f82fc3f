"""Strategy names. A preset is a name bound to a strategy class and default keyword arguments — no subclass per
preset. Classes are named by import path so that listing names (the CLI's `--help`) imports no optional package.
`STRATEGY_REGISTRY` is Lightning's: `STRATEGY_REGISTRY.register("mine", MyStrategy, "what it does", **defaults)`
makes `Fabric(strategy="mine")` build `MyStrategy(**defaults)`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric_kit.registry import Entry, Registry

if TYPE_CHECKING:
    from fabric_kit.strategies.strategy import Strategy

__all__ = ["STRATEGY_REGISTRY", "Entry", "StrategyRegistry", "register", "strategy_class", "strategy_names"]


class StrategyRegistry(Registry):
    kind = "strategy"

    def available_strategies(self) -> list[str]:
        return list(self)


STRATEGY_REGISTRY = StrategyRegistry()


def register(name: str, class_path: type | str, description: str, **kwargs: Any) -> None:
    STRATEGY_REGISTRY.register(name, class_path, description, **kwargs)


def strategy_names() -> list[str]:
    return ["auto", *STRATEGY_REGISTRY]


def strategy_class(name: str) -> tuple[type[Strategy], dict[str, Any]]:
    """The class and preset arguments registered as `name`."""
    return STRATEGY_REGISTRY.resolve(name)


register("single_device", "fabric_kit.strategies.single_device:SingleDeviceStrategy", "one process, one device")
register("ddp", "fabric_kit.strategies.ddp:DDPStrategy", "data parallel; re-runs the script for each rank")
register("ddp_spawn", "fabric_kit.strategies.ddp:DDPStrategy", "data parallel; ranks started with spawn",
         start_method="spawn")
register("ddp_fork", "fabric_kit.strategies.ddp:DDPStrategy", "data parallel; ranks forked (no CUDA before fork)",
         start_method="fork")
register("ddp_notebook", "fabric_kit.strategies.ddp:DDPStrategy", "ddp_fork, for notebooks", start_method="fork")
register("ddp_find_unused_parameters_true", "fabric_kit.strategies.ddp:DDPStrategy",
         "ddp for models whose forward skips some parameters", find_unused_parameters=True)
register("ddp_spawn_find_unused_parameters_true", "fabric_kit.strategies.ddp:DDPStrategy",
         "ddp_spawn for models whose forward skips some parameters", start_method="spawn",
         find_unused_parameters=True)
register("fsdp", "fabric_kit.strategies.fsdp:FSDPStrategy", "fully sharded data parallel (FSDP2); re-runs the script")
register("fsdp_cpu_offload", "fabric_kit.strategies.fsdp:FSDPStrategy", "fsdp with shards kept in CPU memory",
         cpu_offload=True)
register("single_xla", "fabric_kit.strategies.xla:SingleXLAStrategy", "one process, one XLA device (TPU)")
register("xla", "fabric_kit.strategies.xla:XLAStrategy", "data parallel over every XLA device of the host (TPU)")
register("xla_fsdp", "fabric_kit.strategies.xla_fsdp:XLAFSDPStrategy",
         "parameters, gradients and optimizer state sharded over XLA devices (TPU)")
register("deepspeed", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
         "DeepSpeed; ZeRO stage 2 unless DeepSpeedStrategy(config=...) says otherwise (extra: deepspeed)")
register("deepspeed_stage_1", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
         "DeepSpeed ZeRO stage 1: optimizer states sharded", stage=1)
register("deepspeed_stage_2", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
         "DeepSpeed ZeRO stage 2: optimizer states and gradients sharded", stage=2)
register("deepspeed_stage_2_offload", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
         "deepspeed_stage_2 with optimizer states in CPU memory", stage=2, offload_optimizer=True)
register("deepspeed_stage_3", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
         "DeepSpeed ZeRO stage 3: parameters sharded too", stage=3)
register("deepspeed_stage_3_offload", "fabric_kit.strategies.deepspeed:DeepSpeedStrategy",
         "deepspeed_stage_3 with optimizer states and parameters in CPU memory", stage=3, offload_optimizer=True,
         offload_parameters=True)
