"""llamaindex_steer: adapters over actsteer.SteeredModel (work in progress; see the issues)."""
