"""The whole-slide engine: open any slide, find tissue, score it tile by tile, turn scores into outputs.

``slide`` opens files (OpenSlide) and uploads; ``tissue`` masks a thumbnail; ``engine`` plans the tile grid
and scores it block by block (in this process, or on Spark with ``spark``); ``outputs`` draws heatmaps
and traces regions; ``python -m core.wsi`` runs it from the command line.
"""
