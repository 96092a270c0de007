"""Analysis of run directories: load (tidy table + validation), tables (Table 1/11/12), stats (rliable),
plots, items (one per paper table/figure, see paper_figures/figures.yaml), report, export (marl-eval).
Command line: `python -m analysis --help`."""
