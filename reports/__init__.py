"""Reports: tables, plots, a self-contained HTML report and summary.json, read from a results store."""
