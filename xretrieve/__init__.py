"""xretrieve: cross-modal retrieval over a media folder."""
