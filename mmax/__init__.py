"""The command-line client of the service (``mmax``); see :mod:`mmax.cli`."""
