"""Backbones from timm, offline ImageNet weights, and model files on disk."""

from .backbones import (
    OFFLINE_WEIGHTS,
    BackboneInfo,
    create_backbone,
    list_backbones,
)
from .files import ModelCard, load_model_files, save_model_files

__all__ = [
    "OFFLINE_WEIGHTS",
    "BackboneInfo",
    "ModelCard",
    "create_backbone",
    "list_backbones",
    "load_model_files",
    "save_model_files",
]
