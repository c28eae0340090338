"""The profiles' names, in one place for the package modules that act on a profile (which evals
settings, which eval model, which precision). experiment.PROFILES keys its table with these; the
values each profile sets stay in that table."""

AUTO = "auto"  # gemma-2-2b with CUDA, else the embedded default
EMBEDDED = "gemma-3-270m"  # the embedded default: Gemma 3 270M on BBC News, offline, CPU
GEMMA2 = "gemma-2-2b"  # the seed's setting: CUDA and the Hugging Face hub
SYNTH = "synth"  # ground truth: a SynthSAEBench world (synth-cpu: full width, siblings not exclusive)
SYNTH_NARROW = "synth-narrow"  # ground truth in SynthSAEBench-16k's regime: exclusive siblings, an SAE 4x narrower
