"""The one training command for every model: ``python -m core.training <model-id> --data DIR``.

Transfer learning as published studies practise it: an ImageNet backbone, a new classification head,
``--mode tl`` (train the head only) or ``--mode ft`` (fine-tune all but the first block), augmentation,
class balancing, a split grouped by original cell/slide/image, early stopping, and a report written
into the model's ``model.json``.
"""
