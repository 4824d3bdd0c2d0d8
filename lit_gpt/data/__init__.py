"""Data: the packed shard format, corpus readers, the shared preparation pipeline and the training loader."""
