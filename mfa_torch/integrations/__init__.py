"""Hooks for model libraries: `mfa_torch.integrations.transformers` and `mfa_torch.integrations.diffusers`.

Each submodule imports its library, so import the one you use; mfa_torch itself depends on neither.
"""
