"""Networks: the image transformation network and the VGG16 loss network."""

from stylepipe.models.transformer import TransformerNet, load_transformer
from stylepipe.models.vgg import LAYER_INDICES, LossNetwork, random_state_dict

__all__ = ["TransformerNet", "load_transformer", "LossNetwork", "random_state_dict", "LAYER_INDICES"]
