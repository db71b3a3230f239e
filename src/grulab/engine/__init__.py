"""Whole-sequence execution: the reference loop, fused kernels, and the dispatcher."""
