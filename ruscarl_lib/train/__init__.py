"""Training: the scaffolded GRPO trainer, the run entry point, what a run folder holds, the
clean-prompt contract, TRL compatibility and start-up checks (the notebook's live view is
`notebook.live`).

`python -m ruscarl_lib.train.run --params f.yaml` trains from a params file. Nothing is imported
here: TRL and transformers load only when a submodule asks for them, after Unsloth if the run uses it.
"""
