"""Triton kernels with their torch references and dispatch (fused AdaIN / modulated convolution / noise).

Leaf ops: this package imports torch and triton, nothing else of alae-rt.
"""
