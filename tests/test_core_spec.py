"""Model specs: normalization, describe() against hand-computed counts, and the one-line
errors a user gets for a bad spec.

    pytest tests/test_core_spec.py -q
"""
import json

import numpy as np
import pytest

from core.model import Model

SMALL = [{"type": "conv", "out": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
         {"type": "maxpool"}, {"type": "flatten"}, {"type": "dense", "out": 10}]

CNN = [{"type": "conv", "out": 32, "kernel": 5, "pad": 2}, {"type": "relu"}, {"type": "maxpool", "kernel": 2},
       {"type": "conv", "out": 64, "kernel": 5, "pad": 2}, {"type": "relu"}, {"type": "maxpool", "kernel": 2},
       {"type": "flatten"}, {"type": "dense", "out": 256}, {"type": "relu"}, {"type": "dropout", "p": 0.4},
       {"type": "dense", "out": 10}]


def test_describe_small_cnn_by_hand():
    d = Model(SMALL).describe()
    # conv: 3*3*1*8 + 8 = 80 params; 28*28*8 outputs * (2*9 + 1) FLOPs = 119168
    # relu: 28*28*8 = 6272; maxpool: 14*14*8 outputs * 3 comparisons = 4704; flatten: 0
    # dense: 1568*10 + 10 = 15690 params; 2*1568*10 + 10 = 31370 FLOPs
    assert [l["params"] for l in d["layers"]] == [80, 0, 0, 0, 15690]
    assert [l["flops"] for l in d["layers"]] == [119168, 6272, 4704, 0, 31370]
    assert [l["out_shape"] for l in d["layers"]] == [[28, 28, 8], [28, 28, 8], [14, 14, 8], [1568], [10]]
    assert [l["type"] for l in d["layers"]] == ["conv", "relu", "maxpool", "flatten", "dense"]
    assert [l["index"] for l in d["layers"]] == [0, 1, 2, 3, 4]
    assert d["params"] == 15770 and d["state"] == 0 and d["flops_per_sample"] == 161514
    json.dumps(d)
    text = Model(SMALL).summary()
    assert "15,770 params" in text and "maxpool" in text


def test_cnn_preset_counts():
    m = Model(CNN)
    # 5*5*1*32+32 + 5*5*32*64+64 + 3136*256+256 + 256*10+10
    assert m.theta.size == 832 + 51264 + 803072 + 2570 == 857738
    assert m.output_shape == (10,)
    assert m.layers[6].out_shape == (3136,)


def test_output_shapes_with_strides():
    m = Model([{"type": "conv", "out": 4, "kernel": 3, "stride": 2},        # (13, 13, 4)
               {"type": "maxpool", "kernel": 3, "stride": 2},               # (6, 6, 4)
               {"type": "batchnorm"}, {"type": "flatten"}])
    assert [l.out_shape for l in m.layers] == [(13, 13, 4), (6, 6, 4), (6, 6, 4), (144,)]
    x = np.zeros((2, 28, 28, 1), np.float32)
    assert m.forward(x, False).shape == (2, 144)


def test_normalized_spec_has_defaults_and_round_trips():
    m = Model(SMALL + [{"type": "dropout"}, {"type": "batchnorm"}])
    assert m.spec[0] == {"type": "conv", "out": 8, "kernel": 3, "stride": 1, "pad": 1}
    assert m.spec[2] == {"type": "maxpool", "kernel": 2, "stride": 2}
    assert m.spec[5] == {"type": "dropout", "p": 0.5}
    assert m.spec[6] == {"type": "batchnorm", "momentum": 0.1, "eps": 1e-5}
    again = Model(json.loads(json.dumps(m.spec)))
    assert again.spec == m.spec
    np.testing.assert_array_equal(again.theta, m.theta)        # same seed, same init


def test_init_he_glorot_and_seed():
    spec = [{"type": "flatten"}, {"type": "dense", "out": 400}, {"type": "batchnorm"}, {"type": "relu"},
            {"type": "dense", "out": 300}, {"type": "tanh"}, {"type": "dense", "out": 10}]
    m = Model(spec)
    w1, w2, w3 = m.layers[1].W, m.layers[4].W, m.layers[6].W
    assert w1.std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)         # He (ReLU after BN)
    assert w2.std() == pytest.approx(np.sqrt(2 / (400 + 300)), rel=0.02)  # Glorot (tanh)
    assert w3.std() == pytest.approx(np.sqrt(2 / (300 + 10)), rel=0.05)   # Glorot (final layer)
    assert (m.layers[1].b == 0).all() and (m.layers[2].gamma == 1).all() and (m.layers[2].beta == 0).all()
    np.testing.assert_array_equal(m.layers[2].running_var, 1)
    assert np.array_equal(Model(spec, seed=0).theta, m.theta)
    assert not np.array_equal(Model(spec, seed=1).theta, m.theta)
    assert Model(spec, dtype=np.float64).theta.dtype == np.float64


@pytest.mark.parametrize("spec,message", [
    ([{"type": "convolution"}], "layer 0: unknown type 'convolution' (one of: dense, conv,"),
    ([{"out": 3}], "layer 0: missing 'type'"),
    ([{"type": "relu"}, "relu"], "layer 1: expected a table with a 'type' key"),
    ([{"type": "conv", "out": 3, "kernel": 3, "kernal": 3}], "layer 0 (conv): unknown key 'kernal' (known: out, kernel, stride, pad)"),
    ([{"type": "relu", "p": 1}], "layer 0 (relu): unknown key 'p' (known: none)"),
    ([{"type": "flatten"}, {"type": "dense"}], "layer 1 (dense): missing required key 'out'"),
    ([{"type": "conv", "out": 3, "kernel": -1}], "layer 0 (conv): 'kernel' must be a positive int, got -1"),
    ([{"type": "conv", "out": 3, "kernel": 3, "stride": 0}], "layer 0 (conv): 'stride' must be a positive int, got 0"),
    ([{"type": "conv", "out": 3, "kernel": 3, "pad": -1}], "layer 0 (conv): 'pad' must be a non-negative int, got -1"),
    ([{"type": "flatten"}, {"type": "dense", "out": 10.0}], "layer 1 (dense): 'out' must be an int, got 10.0"),
    ([{"type": "flatten"}, {"type": "dense", "out": True}], "layer 1 (dense): 'out' must be an int, got True"),
    ([{"type": "dropout", "p": 1.0}], "layer 0 (dropout): 'p' must be a float in [0, 1), got 1.0"),
    ([{"type": "dropout", "p": "0.5"}], "layer 0 (dropout): 'p' must be a finite float, got '0.5'"),
    ([{"type": "batchnorm", "momentum": 1.5}], "layer 0 (batchnorm): 'momentum' must be a float in [0, 1], got 1.5"),
    ([{"type": "batchnorm", "eps": 0}], "layer 0 (batchnorm): 'eps' must be a positive float, got 0.0"),
    ([{"type": "conv", "out": 4, "kernel": 29}], "layer 0 (conv): 'kernel' 29 does not fit the 28x28 input"),
    ([{"type": "maxpool", "kernel": 30}], "layer 0 (maxpool): 'kernel' 30 is larger than the 28x28 input"),
    ([{"type": "dense", "out": 10}], "layer 0 (dense): input has shape (28, 28, 1), not flat; add {type = \"flatten\"}"),
    ([{"type": "flatten"}, {"type": "conv", "out": 3, "kernel": 3}], "layer 1 (conv): input has shape (784,), expected images"),
    ([], "model spec must be a non-empty list"),
])
def test_spec_errors(spec, message):
    with pytest.raises(ValueError) as info:
        Model(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_forward_input_shape_error():
    with pytest.raises(ValueError, match=r"model input must have shape \(B, 28, 28, 1\), got \(2, 28, 28\)"):
        Model(SMALL).forward(np.zeros((2, 28, 28)), False)


def test_after_layer_hook_sees_every_output():
    m = Model(SMALL)
    seen = []
    out = m.forward(np.zeros((2, 28, 28, 1)), False, after_layer=lambda l, y: seen.append((l.index, y.shape)))
    assert seen == [(0, (2, 28, 28, 8)), (1, (2, 28, 28, 8)), (2, (2, 14, 14, 8)), (3, (2, 1568)), (4, (2, 10))]
    assert out.dtype == np.float32


def test_eval_in_chunks_matches_one_pass(monkeypatch):
    m = Model(SMALL)
    x = np.random.default_rng(1).random((9, 28, 28, 1), dtype=np.float32)
    whole = m.forward(x, False)
    import core.layers
    monkeypatch.setattr(core.layers, "CHUNK_ELEMENTS", 28 * 28 * 9 * 2)       # 2 samples/chunk
    np.testing.assert_allclose(m.forward(x, False), whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.forward(x, True), whole, rtol=1e-5, atol=1e-6)     # no dropout/BN


def test_float32_throughout():
    """No silent upcast: every layer's output and input-gradient stays float32."""
    spec = [{"type": "conv", "out": 4, "kernel": 3, "stride": 2, "pad": 1}, {"type": "batchnorm"},
            {"type": "sigmoid"}, {"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "tanh"},
            {"type": "maxpool"}, {"type": "flatten"}, {"type": "dense", "out": 8}, {"type": "batchnorm"},
            {"type": "relu"}, {"type": "dropout", "p": 0.5}, {"type": "dense", "out": 10}]
    from core.keyed_random import keyed_noise
    from core.losses import softmax_cross_entropy
    m = Model(spec)
    dtypes = []
    x = np.random.default_rng(0).random((4, 28, 28, 1))            # float64 input is converted once
    for train in (False, True):
        out = m.forward(x, train, keyed_noise(0, 0, np.arange(4)),
                        after_layer=lambda l, y: dtypes.append(y.dtype))
    assert set(dtypes) == {np.dtype(np.float32)}
    _, d = softmax_cross_entropy(out, np.arange(4), 4)
    dx = m.backward(d, input_grad=True)
    assert dx.dtype == m.grad.dtype == m.state.dtype == np.float32

