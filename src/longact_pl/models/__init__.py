"""Model loaders chosen by Hydra ``_target_`` (see ``conf/model/``)."""

from longact_pl.models.types import LoadedModel

__all__ = ["LoadedModel"]
