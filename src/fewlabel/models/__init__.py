"""Backbones from timm, offline ImageNet weights, and model files on disk."""

from .backbones import OFFLINE_WEIGHTS, BackboneInfo, check_image_size, create_backbone, create_encoder, list_backbones
from .files import ModelCard, load_model_files, read_card, save_model_files

__all__ = [
    "OFFLINE_WEIGHTS",
    "BackboneInfo",
    "ModelCard",
    "check_image_size",
    "create_backbone",
    "create_encoder",
    "list_backbones",
    "load_model_files",
    "read_card",
    "save_model_files",
]
