"""Hot-path kernels for Tandem. Each op has a torch reference and one dispatch function.

The dispatch functions are the only entry points the runtime calls. Behind them: Triton
kernels for CUDA tensors (kernels/triton), C++ kernels for bfloat16/float16 CPU tensors
(kernels/cpu: decode and prefill attention, fused add+RMSNorm, rotary, SiLU*up, small-batch
GEMV, the decode stack, int8/fp8 KV quantization; and, in any dtype, KV pack/unpack: byte
copies; compiled for the machine on first use), and the torch reference for everything else
(see kernels.backend).
"""
