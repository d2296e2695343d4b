"""Triton implementations of the hot-path kernels, one module per op family.

Never imported by the CPU path: each dispatch function in `kernels/` imports its module here
only when it launches a Triton kernel (see `kernels.backend`). Every launcher checks shapes,
dtypes, devices and strides before the launch and matches its torch reference's contract.
"""
