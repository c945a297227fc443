"""Installs nmtkit and its command-line tools (the top-level cli/ folder installs as nmtkit_cli)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "nmtkit" / "version.py").read_text(), version)
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="nmtkit",
    version=version["__version__"],
    description="Neural machine translation, speech recognition and speech translation on PyTorch",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nmtkit", "nmtkit.*"]) + ["nmtkit_cli"],
    package_dir={"nmtkit_cli": "cli"},
    package_data={"nmtkit": ["config/presets/*.yaml"]},
    install_requires=requirements,
    extras_require={
        # CTranslate2 export (nmtkit-export format=ctranslate2); dev installs it so CI runs
        # the export's parity tests.
        "ctranslate2": ["ctranslate2>=4"],
        # Plots of training curves (nmtkit-runs --plot, common.plot=true).
        "plot": ["matplotlib>=3.5"],
        # TensorBoard event files (common.tensorboard_logdir); train_log.jsonl needs nothing.
        "tensorboard": ["tensorboard>=2.12"],
        # Sweeps submitted to Slurm (hydra/launcher=submitit_slurm).
        "slurm": ["submitit>=1.4"],
        # The tests cover every optional feature.
        "dev": [
            "pytest>=7",
            "ruff>=0.4",
            "ctranslate2>=4",
            "matplotlib>=3.5",
            "tensorboard>=2.12",
            "submitit>=1.4",
        ],
    },
    entry_points={
        "console_scripts": [
            "nmtkit-preprocess=nmtkit_cli.preprocess:cli_main",
            "nmtkit-train=nmtkit_cli.train:cli_main",
            "nmtkit-generate=nmtkit_cli.generate:cli_main",
            "nmtkit-score=nmtkit_cli.score:cli_main",
            "nmtkit-average-checkpoints=nmtkit_cli.average_checkpoints:cli_main",
            "nmtkit-export=nmtkit_cli.export:cli_main",
            "nmtkit-import-fairseq=nmtkit_cli.import_fairseq:cli_main",
            "nmtkit-runs=nmtkit_cli.runs:cli_main",
        ]
    },
)
