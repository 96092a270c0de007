# The MARIE reproduction workflow: every table and figure of the paper from one command.
#
#   snakemake --cores 2 demo                 # the all_smac pipeline at toy scale (duration: docs/workflow.md)
#   snakemake --cores 36 all_smac            # Table 1 + Fig. 3, 13, 14 on the configured backend
#   snakemake --profile workflows/profiles/slurm all_smac
#   snakemake --cores 1 report               # the report of everything that exists so far
#
# Targets: all_smac, all_smacv2, all_mamujoco, ablations, horizon, epsilon, model_analysis, report, demo.
# The runs come from workflows/config.yaml through workflows/plan.py; see docs/workflow.md.

configfile: "workflows/config.yaml"

include: "workflows/rules/common.smk"
include: "workflows/rules/runs.smk"
include: "workflows/rules/analysis.smk"
