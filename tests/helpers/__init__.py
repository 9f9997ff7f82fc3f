"""What tests in several folders share: the Trainer's test models and loaders (`loops`), checkpoints crafted to run
code (`crafted`), readers of what loggers wrote (`events`, `wandb_records`), and the environment and runners for
real processes: examples, launcher commands and training scripts (`processes`, `examples`, `cli_processes`,
`checkpoint_runs`)."""
