"""depthlab: reproductions of four studies of why very deep networks train or fail to train.

Import layout (one namespace over the repository's code folders, see pyproject.toml):
``depthlab`` (this folder, ``core/``: backend, data, tracking, runner, ...),
``depthlab.layers``, ``depthlab.callbacks``, ``depthlab.reproductions``.

Pick the backend before the first ``import keras``: ``depthlab.backend.select("torch")``
or ``KERAS_BACKEND=torch``.
"""

__version__ = "0.1.0"
