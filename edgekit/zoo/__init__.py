"""The model zoo: PyTorch definitions of the lightweight CNNs of the seed documents."""

from edgekit.zoo.registry import ModelEntry, create_model, get_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
