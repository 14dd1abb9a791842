"""The training engine and its configuration and result types."""

from tensafe.engine.dp_state import DPState
from tensafe.engine.engine import BatchInput, TrainingEngine
from tensafe.engine.optimizers import AdamParams, OptimizerConfig, OptimizerName
from tensafe.engine.results import (
    DPMetrics,
    EngineInfo,
    ForwardBackwardResult,
    LossFnOutput,
    OptimStepResult,
)

__all__ = [
    "AdamParams",
    "BatchInput",
    "DPMetrics",
    "DPState",
    "EngineInfo",
    "ForwardBackwardResult",
    "LossFnOutput",
    "OptimStepResult",
    "OptimizerConfig",
    "OptimizerName",
    "TrainingEngine",
]
