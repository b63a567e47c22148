"""One module per model id; each sets ``MODEL_CLASS`` to its :class:`core.model_base.MicroscopyModel`."""
