"""The parts of the lggseg MONAI Label app (MONAI Label's ``lib`` convention): model files, the inference and
training tasks (and the training input of a study), the checked datastore, the checks of the files a client
sends, the confined reads of the studies folder, and the one adapter to MONAI Label's private names.
``main.py`` imports them all when the server loads it."""
