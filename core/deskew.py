"""Deskew: the model spec's record that the model sees deskewed digits.

Deskewing shears each digit upright before the network sees it. It is a transformation of the
input images, not a layer of the network: data/pipeline.py does it, with the augmentation and
the normalisation, in training and at evaluation. What the spec holds is the choice:

    {type = "deskew"}                          the network input is deskewed, after augmentation
                                               (which then adds scale and shape, not position)
    {type = "deskew", before_augment = true}   the raw training images are deskewed, then
                                               augmented: upright digits in every position

and in both cases every image is deskewed at evaluation. Why a spec entry rather than a [data]
setting: the spec is what every checkpoint and model file carries, so dist.evaluate,
launch.predict, launch.serve and ensembles deskew exactly as the model was trained (checkpoints
written when this was a deskewing layer read the same), and the layers after it keep their
indices (a dropout layer's random stream is its index).

In the model it is the identity, forward and backward, with no parameters: the network proper
starts after it. Feed a model its input through data/pipeline.py (`evaluation_input`), not
through `normalize` alone.

Tested by tests/test_data_pipeline.py.
"""
from core.layers import Layer


class Deskew(Layer):
    """(B, H, W, 1) -> (B, H, W, 1) unchanged: the pipeline deskewed it (data/pipeline.py)."""
    type_name = "deskew"
    KEYS = {"before_augment": (bool, False, "flag")}

    def __init__(self, index, input_shape, before_augment=False):
        super().__init__(index, input_shape)
        if index != 0:
            self.fail("deskewing prepares the input images, so it must come first in the model")
        if len(self.input_shape) != 3 or self.input_shape[2] != 1:
            self.fail(f"needs single-channel images (H, W, 1), got input shape {self.input_shape}")
        self.before_augment = before_augment

    def flops(self, input_shape):
        return 0

    def forward(self, x, train):
        return x

    def backward(self, dy):
        return dy
