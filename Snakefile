# Inverting image representations: Dosovitskiy & Brox (2016), Mahendran & Vedaldi (2015).
# Thin on purpose: configuration and its validation, the rule files, and `all`.
import shlex
import sys

from snakemake.utils import min_version

min_version("9.0")

# The package `pipeline/` beside this file: importable by this process (config
# checks, the papers' vocabulary) and by every job, whether the project is
# pip-installed or a job runs in the conda environment of envs/pipeline.yaml
# (`--sdm conda`), which installs the dependencies only.
sys.path.insert(0, workflow.basedir)
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


# The default config sits beside this file, so `--directory` can point anywhere.
# `--configfile other.yaml` (e.g. config/imagenet.yaml) replaces it instead of
# being merged into it (Snakemake's default), so that no sample-sized setting
# leaks into another run; missing keys take the schema's defaults.
if not workflow.overwrite_configfiles:

    configfile: workflow.source_path("config/config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train_helpers.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/baselines_helpers.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate_helpers.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/preimage.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
