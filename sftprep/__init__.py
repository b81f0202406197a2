"""sftprep: supervised fine-tuning data preparation on Apache Beam."""

__version__ = "0.1.0"
