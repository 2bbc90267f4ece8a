"""compare's output: runs grouped as a paper would, plots, a table and an HTML report. No MLflow
here: the compare stage turns runs into `RunRecord`s."""
