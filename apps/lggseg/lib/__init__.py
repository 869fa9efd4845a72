"""The parts of the lggseg MONAI Label app (MONAI Label's ``lib`` convention): model files, the inference
and training tasks, and the checked datastore. ``main.py`` imports them all when the server loads it."""
