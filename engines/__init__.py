"""The GPU side: the fused ray-marching kernel and its torch op, the TensorRT plugin built from
the same kernel, engine build and runtime. Imports nothing of ours; importing it compiles
nothing and needs no GPU."""
