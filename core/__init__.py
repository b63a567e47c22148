"""Model-independent machinery: assets, image decoding, the model base class, the registry, training."""
