"""Image files in, figures out: what the tasks and the command line read and draw,
without being tasks themselves. `media.images` turns files, folders, PIL images and
arrays into RGB arrays; `media.plots` draws classification, retrieval, similarity and
patch-feature figures (matplotlib). Layer 3, beside `tasks` (the plots use the tasks'
embedding helpers)."""
