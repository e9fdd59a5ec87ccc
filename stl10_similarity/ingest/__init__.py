"""Ingestion: the feature model, where embedding runs (runners), and the features stage's planning and
one write path (extract: a whole source; update: a folder kept up to date)."""
