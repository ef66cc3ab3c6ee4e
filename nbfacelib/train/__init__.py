"""nbfacelib.train: the training engine (``fit``), its typed config, schedules, checkpoints.

``TrainConfig`` imports without torch (so ``nbface --help`` stays fast); ``fit``,
``load_backbone`` and ``TrainingDiverged`` load the engine on first use.
"""

from nbfacelib.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainingDiverged", "fit", "load_backbone"]


def __getattr__(name: str):
    if name in ("fit", "load_backbone", "TrainingDiverged"):
        from nbfacelib.train import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'nbfacelib.train' has no attribute {name!r}")
