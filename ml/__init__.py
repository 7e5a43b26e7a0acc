"""The classifier: windowing, models, training, metrics and synthetic phantoms.

Knows arrays, tensors and weight files only; imports nothing from `node` or `storage`.
"""
