"""core: the network itself, pure numpy -- layers, losses, model, optimizer, schedules,
gradient checks.  No MPI, no h5py, no files: read it as a textbook chapter.

    keyed_random.py   counter-based randomness keyed by global sample index
    deskew.py         the spec's deskew entry (data/pipeline.py does the deskewing)
    layers.py         Layer interface, Dense, ReLU/Sigmoid/Tanh, Dropout, Flatten
    conv.py           Conv2D (im2col + GEMM) and MaxPool2D, NHWC
    norm.py           BatchNorm with a cross-rank `reduce`
    spec.py           the declarative model spec: validation and defaults
    model.py          Model: layers over one flat parameter arena
    losses.py         softmax cross-entropy, MSE
    optim.py          SGD with momentum / Nesterov / masked weight decay
    ema.py            a moving average of the weights
    replicas.py       a process's cores: one copy of the model per thread, as ranks would
    schedules.py      lr(step): constant, step, cosine, linear warmup
    gradcheck.py      finite-difference checks (python -m core.gradcheck)

Tests: pytest tests/test_core_*.py
"""
