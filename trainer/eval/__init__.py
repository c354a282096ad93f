"""`wit eval`: zero-shot classification, image-text retrieval and a linear probe on a trained CLIP.

metrics.py holds the pure maths (tested by hand); datasets.py reads images; model.py loads checkpoints;
features.py encodes in batches; zeroshot.py, retrieval.py and linear_probe.py each run one evaluation.
"""
