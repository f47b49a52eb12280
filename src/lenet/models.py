"""The model registry, importable as ``lenet.models`` (it lives in ``lenet.core.models``)."""

from lenet.core.models import create_model, list_models, register_model, register_pooling

__all__ = ["create_model", "list_models", "register_model", "register_pooling"]
