"""Model-independent machinery: the model template and its typed input spec, the registry and assets, image
decoding, options, evaluation figures, jobs, inference runtimes and batching; whole slides in ``core.wsi``,
the shared training command in ``core.training``, one module per model (and its training recipe) in
``core.models``."""
