"""Each paper's nn.Modules and losses, and nothing else: pure torch, one file per paper,
the paper's equations and sections named in the docstrings. Shared pieces live in
`layers`."""
