"""Datasets (folder -> items), protocols (items -> few-shot / base / novel subsets), transforms, datamodule."""
