"""What users touch: the Python API (`api`), the `llava-avc` command (`cli`, `flags`, `ask`,
`run_script`, `doctor`) and the blind-token picture (`heatmap`)."""
