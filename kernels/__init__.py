"""Hot-path kernels for Tandem. Each op has a torch reference and one dispatch function.

The dispatch functions are the only entry points the runtime calls; a Triton implementation
registers behind them for CUDA tensors, and CPU tensors always take the torch reference.
"""
