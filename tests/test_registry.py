"""Lightning's registries: `STRATEGY_REGISTRY` / `ACCELERATOR_REGISTRY` with `register(name, cls, description,
**init_params)`, `get`, `remove`, `available_*()`; a registered name is what `Fabric(...)` builds."""
import pytest

from fabric_kit import Fabric
from fabric_kit.accelerators import ACCELERATOR_REGISTRY, CPUAccelerator, accelerator_names
from fabric_kit.registry import Registry
from fabric_kit.strategies import STRATEGY_REGISTRY, DDPStrategy, SingleDeviceStrategy, strategy_names


class LoudSingleDevice(SingleDeviceStrategy):
    def __init__(self, volume=1, **kwargs):
        super().__init__(**kwargs)
        self.volume = volume


@pytest.fixture
def registered():
    """Names registered by a test are removed after it."""
    names = []
    yield names
    for registry, name in names:
        registry.remove(name)


def test_register_get_and_remove():
    registry = Registry()
    registry.register("loud", LoudSingleDevice, "a strategy", volume=3)
    assert "loud" in registry and registry["loud"].description == "a strategy"
    built = registry.get("loud")
    assert isinstance(built, LoudSingleDevice) and built.volume == 3
    with pytest.raises(ValueError, match="'loud' is already registered; pass override=True"):
        registry.register("loud", LoudSingleDevice)
    registry.register("loud", LoudSingleDevice, override=True, volume=5)
    assert registry.get("loud").volume == 5
    registry.remove("loud")
    with pytest.raises(KeyError, match="'loud' is not registered"):
        registry.get("loud")
    assert registry.get("loud", "fallback") == "fallback"


def test_lightnings_keyword_for_the_class():
    STRATEGY_REGISTRY.register("by_keyword", strategy=LoudSingleDevice, description="keyword", volume=4)
    try:
        assert STRATEGY_REGISTRY.resolve("by_keyword") == (LoudSingleDevice, {"volume": 4})
    finally:
        STRATEGY_REGISTRY.remove("by_keyword")
    ACCELERATOR_REGISTRY.register("cpu_by_keyword", accelerator=CPUAccelerator, description="keyword")
    try:
        assert isinstance(ACCELERATOR_REGISTRY.get("cpu_by_keyword"), CPUAccelerator)
    finally:
        ACCELERATOR_REGISTRY.remove("cpu_by_keyword")


def test_register_as_a_decorator():
    registry = Registry()

    @registry.register("decorated", description="by decorator", volume=2)
    class Decorated(LoudSingleDevice):
        pass

    assert registry.resolve("decorated") == (Decorated, {"volume": 2})


def test_a_class_path_is_imported_only_when_used():
    registry = Registry()
    registry.register("later", "fabric_kit.strategies.ddp:DDPStrategy", "by path")
    assert registry["later"].class_path == "fabric_kit.strategies.ddp:DDPStrategy"
    assert registry.resolve("later")[0] is DDPStrategy
    with pytest.raises(TypeError, match=r"register\('bad', 3\): pass a class"):
        registry.register("bad", 3)


def test_the_presets_are_in_the_strategy_registry():
    assert {"ddp", "ddp_spawn", "fsdp", "deepspeed_stage_2"} <= set(STRATEGY_REGISTRY.available_strategies())
    assert strategy_names() == ["auto", *STRATEGY_REGISTRY.available_strategies()]
    assert isinstance(STRATEGY_REGISTRY.get("ddp_find_unused_parameters_true"), DDPStrategy)
    assert "ddp_spawn" in str(STRATEGY_REGISTRY)


def test_fabric_builds_a_registered_strategy(registered):
    STRATEGY_REGISTRY.register("loud_single", LoudSingleDevice, "one device, loudly", volume=11)
    registered.append((STRATEGY_REGISTRY, "loud_single"))
    fabric = Fabric(accelerator="cpu", devices=1, strategy="loud_single")
    assert isinstance(fabric.strategy, LoudSingleDevice) and fabric.strategy.volume == 11


def test_fabric_builds_a_registered_accelerator(registered):
    class CountingCPU(CPUAccelerator):
        built = 0

        def __init__(self):
            super().__init__()
            CountingCPU.built += 1

    ACCELERATOR_REGISTRY.register("counting_cpu", CountingCPU, "the CPU, counted")
    registered.append((ACCELERATOR_REGISTRY, "counting_cpu"))
    assert "counting_cpu" in ACCELERATOR_REGISTRY.available_accelerators() and "counting_cpu" in accelerator_names()
    fabric = Fabric(accelerator="counting_cpu", devices=1)
    assert isinstance(fabric.accelerator, CountingCPU) and CountingCPU.built == 1


def test_lightnings_accelerator_names_are_registered():
    assert {"cpu", "cuda", "mps", "tpu"} <= set(ACCELERATOR_REGISTRY.available_accelerators())
