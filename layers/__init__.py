"""Custom Keras layers of depthlab: blocks of the four studies, serialisable and identical on all backends."""
