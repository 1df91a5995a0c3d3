"""The public entry points: autoglm.compile / autoglm.load (entry), the torch.compile backend, config files, sparse fine-tuning, the demo model. The top layer below the CLI."""
