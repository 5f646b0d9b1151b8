"""Training: `run` reads top to bottom (build, start or resume, the loop, finish); `build` is the
only reader of the config; `step` is one plain or GradCache step; `run_log` writes the logs;
`checkpoint` saves and resumes the exact state; `distributed` is the only module touching
torch.distributed."""
