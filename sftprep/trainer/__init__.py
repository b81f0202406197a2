"""`sftprep train`: a small PyTorch trainer that consumes the pipeline's Parquet shards.

The only package that imports torch. It reads files through `sftprep.storage`, so a
dataset on gs:// trains the same as one on local disk.
"""
