"""kdt: lottery tickets, rewinding and knowledge-distillation tickets in JAX/Flax."""

import setuptools

setuptools.setup(
    name="kdt",
    version="0.1.0",
    description=(
        "Lottery-ticket research toolkit in JAX/Flax: iterative magnitude pruning, "
        "rewinding, LR rewinding, fine-tuning and knowledge-distillation tickets."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["kdt", "kdt.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.20",
        "chex>=0.1.90",
        "tensorflow-datasets>=4.9.9",
        # TFDS reads prepared datasets without TensorFlow through
        # `tfds.data_source`, which needs array_record (and grain for streaming).
        "array_record>=0.7.0",
        "grain>=0.2.10",
        "ml_collections>=1.0.0",
        "absl-py>=2.1.0",
        "numpy>=1.26",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            # tests/test_layering.py: the layering contract in .importlinter.
            "import-linter>=2.1",
            "tensorboard>=2.16",
            # tests/test_colab.py executes launch/colab.ipynb.
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        # A gs:// workdir (TPU pods): Orbax/tensorstore write the arrays; gcsfs lets the
        # directories be listed and created and the JSON / plots be written without TensorFlow.
        "gcs": [
            "gcsfs>=2024.2.0",
        ],
        "bench": [
            "torch==2.13.0",
        ],
    },
)
