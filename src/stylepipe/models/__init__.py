"""Networks: the image transformation network and the VGG16 loss network."""

from stylepipe.models.transformer import TransformerNet, load_transformer

__all__ = ["TransformerNet", "load_transformer", "LossNetwork", "random_state_dict", "LAYER_INDICES"]


def __getattr__(name: str):
    # the loss network is loaded only when asked for: `stylepipe stylize` needs the TransformerNet alone
    if name in {"LossNetwork", "random_state_dict", "LAYER_INDICES"}:
        from stylepipe.models import vgg

        return getattr(vgg, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
