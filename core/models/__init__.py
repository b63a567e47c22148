"""One module per model id (``<id>.py``, setting ``MODEL_CLASS``: serving) and its training recipe
(``<id>_training.py``, setting ``RECIPE``: data, sampling, calibration, evaluation)."""
