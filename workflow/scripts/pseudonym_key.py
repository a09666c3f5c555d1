"""Create the secret pseudonymisation key (kept in private_dir, never in results/)."""

from pathlib import Path

from dpmed.io.identifiers import load_or_create_key, restrict_private

load_or_create_key(snakemake.output[0])  # noqa: F821
restrict_private(Path(snakemake.output[0]).parent)  # noqa: F821  (Snakemake made it 0755)
open(snakemake.log[0], "w").write("pseudonymisation key created\n")  # noqa: F821
