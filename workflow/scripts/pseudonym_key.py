"""Create the secret pseudonymisation key (kept in private_dir, never in results/)."""

from dpmed.io.identifiers import load_or_create_key

load_or_create_key(snakemake.output[0])  # noqa: F821
open(snakemake.log[0], "w").write("pseudonymisation key created\n")  # noqa: F821
